//! Code generation from a [`Plan`](crate::plan::Plan).

#[cfg(feature = "clif")]
pub mod c;
#[cfg(feature = "clif")]
pub mod clif;
#[cfg(feature = "clif")]
pub mod cuda;
#[cfg(feature = "clif")]
pub mod header;
pub mod rust;
#[cfg(feature = "clif")]
pub(crate) mod tape;
pub mod tokens;
