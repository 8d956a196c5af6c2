//! The model, below everything: ids, the resources and their statuses,
//! identifiers and the hashes that name sets of them (`model`); the one
//! place every status rule lives ([`lifecycle`]); the typed error of the
//! storage interfaces ([`StoreError`]); and the rate limiter's storage
//! interface with the arithmetic both sides of it run (`limits`,
//! `gcra`). It imports nothing of the crate but itself.

mod error;
pub(crate) mod gcra;
pub mod lifecycle;
pub(crate) mod limits;
mod model;

pub use error::{Conflict, StoreError};
pub use lifecycle::STALE_PROCESSING_SECS;
pub use model::*;
