#!/usr/bin/env bash
# Makes the keras.applications architectures too large to commit (20-130 MB a file)
# under target/applications with the pinned Keras (tests/fixtures/requirements.txt), in
# all three dialects. A second run reuses them while the fixture script and the pins are
# unchanged. Used by tests/applications.sh and bench/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --no-cache-dir -r tests/fixtures/requirements.txt
out=target/applications
stamp=$(cat tests/fixtures/make_fixtures.py tests/fixtures/requirements.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$out"
    mkdir -p "$out"
    .venv/bin/python tests/fixtures/make_fixtures.py --out "$out"
    echo "$stamp" > "$out/.stamp"
fi
