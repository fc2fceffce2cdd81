//! The one error type of the compiler: every failure names the file and, where there is
//! one, the layer, so a user can find what to fix.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error from reading, validating, compiling or running a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The model file the error is about, when known.
    pub file: Option<PathBuf>,
    /// The layer the error is about: `(name, class)`.
    pub layer: Option<(String, String)>,
    /// What went wrong: what was expected and what was found.
    pub message: String,
}

/// Result with the compiler's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a message and no context yet; callers add file and layer.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            file: None,
            layer: None,
            message: message.into(),
        }
    }

    /// Attaches the file, unless a more specific one is already set.
    pub fn in_file(mut self, path: &Path) -> Self {
        if self.file.is_none() {
            self.file = Some(path.to_path_buf());
        }
        self
    }

    /// Attaches the layer, unless an inner layer is already named.
    pub fn in_layer(mut self, name: &str, class: &str) -> Self {
        if self.layer.is_none() {
            self.layer = Some((name.to_string(), class.to_string()));
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some((name, class)) = &self.layer {
            write!(f, "layer `{name}` ({class}): ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Shorthand for an early return with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::new(format!($($arg)*)))
    };
}
