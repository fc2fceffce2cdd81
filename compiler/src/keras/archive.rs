//! The `.keras` zip archive: `config.json`, `metadata.json` and `model.weights.h5`.

use crate::bail;
use crate::error::{Error, Result};
use std::io::{Cursor, Read};

/// The three members of a `.keras` archive, read under a size limit.
pub struct Archive {
    /// `config.json`, as text.
    pub config: String,
    /// `metadata.json`, as text, when present.
    pub metadata: Option<String>,
    /// `model.weights.h5`, as bytes.
    pub weights: Vec<u8>,
}

/// How many times its own size an archive may inflate to: Keras's float weights barely
/// compress, so a larger ratio is a zip bomb, not a model.
const MAX_INFLATION: usize = 16;

/// Reads the members kerac needs from the bytes of a `.keras` file.
pub fn read(bytes: &[u8]) -> Result<Archive> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Error::new(format!("not a readable .keras (zip) archive: {e}")))?;
    let limit = bytes
        .len()
        .saturating_mul(MAX_INFLATION)
        .saturating_add(1 << 20);
    let mut budget = limit;
    let mut member = |name: &str| -> Result<Option<Vec<u8>>> {
        let mut entry = match zip.by_name(name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => bail!("archive member `{name}`: {e}"),
        };
        if entry.size() > budget as u64 {
            bail!(
                "archive member `{name}` claims {} bytes, more than {MAX_INFLATION}x the archive; refusing a likely zip bomb",
                entry.size()
            );
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        (&mut entry)
            .take(budget as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::new(format!("archive member `{name}` is corrupt: {e}")))?;
        if out.len() > budget {
            bail!(
                "archive member `{name}` inflates past {MAX_INFLATION}x the archive; refusing a likely zip bomb"
            );
        }
        budget -= out.len();
        Ok(Some(out))
    };
    let text = |name: &str, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| Error::new(format!("`{name}` is not UTF-8 text")))
    };
    let config = member("config.json")?.ok_or_else(|| {
        Error::new("the archive has no `config.json`; is it a Keras 3 .keras file?")
    })?;
    let config = text("config.json", config)?;
    let metadata = member("metadata.json")?
        .map(|m| text("metadata.json", m))
        .transpose()?;
    let weights = member("model.weights.h5")?
        .ok_or_else(|| Error::new("the archive has no `model.weights.h5`"))?;
    Ok(Archive {
        config,
        metadata,
        weights,
    })
}
