//! Between the RA and the store: what a store error means to a client,
//! and problems written as stored error documents and read back. The store
//! speaks in its own terms (`StoreError`); this is the one place that turns
//! them into ACME problems, for the RA and every other caller (`?`).

use crate::core::{Conflict, ErrorDoc, StoreError};
use crate::problem::Problem;

/// The problem as the store keeps it.
pub fn error_doc(p: &Problem) -> ErrorDoc {
    // A Problem is plain data: serializing it cannot fail.
    ErrorDoc(serde_json::to_value(p).unwrap_or_default())
}

/// A stored error document as a problem (an unreadable one, which only a
/// damaged database holds, as `serverInternal`).
pub fn problem_of(doc: &ErrorDoc) -> Problem {
    serde_json::from_value(doc.0.clone())
        .unwrap_or_else(|e| Problem::internal(format!("bad problem document in database: {e}")))
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        match e {
            StoreError::Conflict(Conflict::AlreadyReplaced(serial)) => Problem::already_replaced(
                format!("certificate {serial} is already being replaced by another order"),
            ),
            StoreError::Conflict(Conflict::KeyChanged) => Problem::malformed(
                "the account's key changed concurrently; retry with the current key",
            ),
            StoreError::Conflict(Conflict::EabKeyUnusable(kid)) => Problem::unauthorized(format!(
                "external account key {kid:?} is revoked, expired or already bound to another account"
            )),
            StoreError::Conflict(Conflict::NotProcessing) => {
                Problem::internal("order left processing during issuance")
            }
            StoreError::NotFound(what) => Problem::internal(what),
            StoreError::Database(e) => Problem::internal(e),
        }
    }
}
