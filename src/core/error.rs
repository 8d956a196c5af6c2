//! The typed error of the storage interfaces ([`crate::sa::Store`],
//! [`super::limits::LimitStore`]). It says what went wrong in the store's
//! terms; the RA (and the other callers) decide what a client is told.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row the operation needs does not exist (or vanished under it).
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The operation conflicts with what is stored.
    #[error("conflict: {0}")]
    Conflict(Conflict),
    /// The database failed, holds what it should not, or was asked
    /// something impossible.
    #[error("{0}")]
    Database(String),
}

/// The conflicts a store operation reports, by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// RFC 9773: another live order already replaces this certificate
    /// (its serial).
    #[error("certificate {0} is already being replaced by another order")]
    AlreadyReplaced(String),
    /// A key change whose old key is no longer the account's.
    #[error("the account's key changed concurrently")]
    KeyChanged,
    /// Binding an account with an external account key that is revoked,
    /// expired, or single-use and already bound (its kid).
    #[error("external account key {0} is revoked, expired or already used")]
    EabKeyUnusable(String),
    /// Completing an order that is no longer processing.
    #[error("the order left processing during issuance")]
    NotProcessing,
}

impl StoreError {
    /// Unreadable stored data.
    pub fn corrupt(what: impl std::fmt::Display) -> StoreError {
        StoreError::Database(format!("bad data in database: {what}"))
    }
}
