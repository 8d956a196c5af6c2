//! Every status rule, once (RFC 8555 §7.1.6): what an order's and an
//! authorization's stored state means at a given time, and the same rules
//! as the SQL predicates the store's conditional statements need. Status
//! is derived at read time from stored state and the clock, so no timer has
//! to fire for an order to become `ready` or `invalid`.
//!
//! The two forms are kept side by side and tested against each other on
//! both databases (tests/store_backends.rs, `lifecycle_sql_matches_rust`).

use super::model::{Authz, AuthzStatus, Order, OrderStatus};

/// An order that stayed `processing` this long was interrupted (a crash
/// during issuance): it reads as invalid, frees the certificate it
/// replaces, and gives its reserved rate-limit tokens back.
pub const STALE_PROCESSING_SECS: i64 = 120;

/// An authorization's status at `now`: a pending or valid one past its
/// expiry is expired.
pub fn authz_status(a: &Authz, now: i64) -> AuthzStatus {
    match a.status {
        AuthzStatus::Pending | AuthzStatus::Valid if a.expires <= now => AuthzStatus::Expired,
        s => s,
    }
}

/// Why an order reads as invalid though it is not stored so.
#[derive(Debug, Clone, Copy)]
pub enum WhyInvalid<'a> {
    /// Processing for longer than [`STALE_PROCESSING_SECS`].
    Interrupted,
    /// Pending past its expiry.
    Expired,
    /// One of its authorizations can no longer become valid (its status
    /// at the time is given).
    Authz(&'a Authz, AuthzStatus),
}

/// An order's status at `now`, from its stored status, its expiry and its
/// authorizations (those of `order.authz_ids`): a pending order is invalid
/// once expired or once any authorization failed or expired, ready once all
/// are valid; a processing order is invalid once stale. `why` says what
/// made it invalid when the stored status does not.
#[derive(Debug, Clone, Copy)]
pub struct OrderState<'a> {
    pub status: OrderStatus,
    pub why: Option<WhyInvalid<'a>>,
}

pub fn order_state<'a>(order: &Order, authzs: &'a [Authz], now: i64) -> OrderState<'a> {
    let invalid = |why| OrderState {
        status: OrderStatus::Invalid,
        why: Some(why),
    };
    match order.status {
        OrderStatus::Processing if order.updated_at < now - STALE_PROCESSING_SECS => {
            invalid(WhyInvalid::Interrupted)
        }
        OrderStatus::Pending if order.expires <= now => invalid(WhyInvalid::Expired),
        OrderStatus::Pending => {
            let mut all_valid = true;
            for a in authzs {
                match authz_status(a, now) {
                    AuthzStatus::Valid => {}
                    AuthzStatus::Pending => all_valid = false,
                    failed => return invalid(WhyInvalid::Authz(a, failed)),
                }
            }
            OrderState {
                status: if all_valid {
                    OrderStatus::Ready
                } else {
                    OrderStatus::Pending
                },
                why: None,
            }
        }
        status => OrderState { status, why: None },
    }
}

/// The same rules as SQL conditions on the row `o` of `orders` (an alias
/// or the table name), with `now` and `stale_before` (`now -
/// STALE_PROCESSING_SECS`) given as placeholders such as `$1`. Statuses
/// that are never stored (`ready`, an authorization's `expired`) need no
/// clause. The store builds its statements from these once, at first use.
pub mod sql {
    /// True when an authorization of order `o` is not valid and unexpired.
    fn some_authz_not_valid(o: &str, now: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
                     WHERE oa.order_id = {o}.id AND (a.status <> 'valid' OR a.expires <= {now}))"
        )
    }

    /// `order_state(..).status == Ready`: `begin_finalize`'s condition.
    pub fn order_ready(o: &str, now: &str) -> String {
        format!(
            "({o}.status = 'pending' AND {o}.expires > {now} AND NOT {})",
            some_authz_not_valid(o, now)
        )
    }

    /// `order_state(..).status == Invalid`: an order that will never issue
    /// (stored invalid, stale in processing, expired or with a failed or
    /// expired authorization). Its negation is a "live" order.
    pub fn order_invalid(o: &str, now: &str, stale_before: &str) -> String {
        format!(
            "({o}.status = 'invalid'
              OR ({o}.status = 'processing' AND {o}.updated_at < {stale_before})
              OR ({o}.status = 'pending' AND ({o}.expires <= {now} OR EXISTS (
                  SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
                  WHERE oa.order_id = {o}.id
                    AND (a.status NOT IN ('pending', 'valid') OR a.expires <= {now})))))"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{AccountId, AuthzId, OrderId};

    fn authz(status: AuthzStatus, expires: i64) -> Authz {
        Authz {
            id: AuthzId(1),
            account_id: AccountId(1),
            identifier_type: crate::core::IdentifierType::Dns,
            identifier: "a.example".into(),
            wildcard: false,
            profile: String::new(),
            status,
            expires,
            challenges: Vec::new(),
        }
    }

    fn order(status: OrderStatus, expires: i64, updated_at: i64) -> Order {
        Order {
            id: OrderId(1),
            account_id: AccountId(1),
            status,
            expires,
            identifiers: Vec::new(),
            authz_ids: Vec::new(),
            error: None,
            cert_serial: None,
            replaces: None,
            profile: String::new(),
            created_at: 0,
            updated_at,
        }
    }

    #[test]
    fn authorizations_expire_unless_final() {
        assert_eq!(
            authz_status(&authz(AuthzStatus::Valid, 10), 10),
            AuthzStatus::Expired
        );
        assert_eq!(
            authz_status(&authz(AuthzStatus::Pending, 11), 10),
            AuthzStatus::Pending
        );
        assert_eq!(
            authz_status(&authz(AuthzStatus::Invalid, 5), 10),
            AuthzStatus::Invalid
        );
    }

    #[test]
    fn orders() {
        let valid = [authz(AuthzStatus::Valid, 100)];
        let st = |o: &Order, a: &[Authz], now| order_state(o, a, now).status;
        assert_eq!(
            st(&order(OrderStatus::Pending, 50, 0), &valid, 10),
            OrderStatus::Ready
        );
        assert_eq!(
            st(&order(OrderStatus::Pending, 50, 0), &valid, 50),
            OrderStatus::Invalid
        );
        let mixed = [
            authz(AuthzStatus::Pending, 100),
            authz(AuthzStatus::Deactivated, 100),
        ];
        let s = order_state(&order(OrderStatus::Pending, 50, 0), &mixed, 10);
        assert!(matches!(
            s.why,
            Some(WhyInvalid::Authz(a, AuthzStatus::Deactivated)) if std::ptr::eq(a, &mixed[1])
        ));
        let p = order(OrderStatus::Processing, 50, 0);
        assert_eq!(st(&p, &[], STALE_PROCESSING_SECS), OrderStatus::Processing);
        assert_eq!(st(&p, &[], STALE_PROCESSING_SECS + 1), OrderStatus::Invalid);
    }
}
