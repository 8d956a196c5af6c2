//! The request being answered, for logs and problems: an id (logged on the
//! request's line and named in any `serverInternal` problem it returns, so
//! an operator can find one from the other) and the account once the JWS
//! names it. Held in a task-local the WFE sets around each request; code
//! outside a request (sweepers, validations) sees none.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

tokio::task_local! {
    static CURRENT: Arc<Request>;
}

pub struct Request {
    pub id: String,
    account: AtomicI64,
}

impl Request {
    pub fn new() -> Arc<Request> {
        Arc::new(Request {
            id: format!("{:016x}", rand::random::<u64>()),
            account: AtomicI64::new(0),
        })
    }

    /// The account that signed the request, if one did.
    pub fn account(&self) -> Option<i64> {
        Some(self.account.load(Ordering::Relaxed)).filter(|a| *a > 0)
    }
}

/// Run `fut` as the request `req`.
pub async fn scope<F: std::future::Future>(req: Arc<Request>, fut: F) -> F::Output {
    CURRENT.scope(req, fut).await
}

/// The current request's id, if running inside one.
pub fn id() -> Option<String> {
    CURRENT.try_with(|r| r.id.clone()).ok()
}

/// Record the account that signed the current request.
pub fn set_account(id: i64) {
    let _ = CURRENT.try_with(|r| r.account.store(id, Ordering::Relaxed));
}
