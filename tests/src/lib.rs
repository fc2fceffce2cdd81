//! Helpers for the conformance tests: finding the fixtures saved by real Keras.
