//! Code generation from a [`Plan`](crate::plan::Plan).

#[cfg(feature = "clif")]
pub mod clif;
#[cfg(feature = "clif")]
pub mod header;
pub mod rust;

/// The weight bytes of a plan in the order and alignment [`rust::emit`] lays them out.
pub fn weight_blob(plan: &crate::plan::Plan) -> Vec<u8> {
    rust::layout(plan).1
}
