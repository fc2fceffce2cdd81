//! Code generation from a [`Plan`](crate::plan::Plan).

pub mod c;
#[cfg(feature = "clif")]
pub mod clif;
pub mod cuda;
pub mod header;
pub mod rust;
pub(crate) mod tape;
pub mod tokens;
