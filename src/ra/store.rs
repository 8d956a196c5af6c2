//! Between the RA and the store: problems written as stored error
//! documents and read back.

use crate::core::ErrorDoc;
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
