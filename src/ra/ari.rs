//! Renewal information (RFC 9773): certIDs, suggested renewal windows and
//! the `replaces` field of newOrder.

use super::Ra;
use crate::core::Account;
use crate::policy::Name;
use crate::problem::Problem;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

/// A certificate's suggested renewal window (RFC 9773 §4.2).
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalInfo {
    pub start: i64,
    pub end: i64,
    pub explanation_url: Option<String>,
    /// Seconds until the client should ask again.
    pub retry_after: u64,
}

/// Validity below which the window sits at half the lifetime rather than
/// two thirds (short-lived certificates), as Let's Encrypt does.
const SHORT_LIVED_SECS: i64 = 10 * 86_400;

impl Ra {
    /// The serial (lower-case hex) named by a certID, which is
    /// base64url(AKI keyIdentifier) "." base64url(serial DER content bytes).
    /// `malformed` (400) if it cannot be parsed, 404 if another issuer's.
    pub fn parse_cert_id(&self, cert_id: &str) -> Result<String, Problem> {
        let bad = || {
            Problem::malformed(format!(
                "certID {cert_id:?} is not base64url(authority key identifier) \".\" base64url(serial number)"
            ))
        };
        let (aki, serial) = cert_id.split_once('.').ok_or_else(bad)?;
        let aki = B64.decode(aki).map_err(|_| bad())?;
        let mut serial = B64.decode(serial).map_err(|_| bad())?;
        if aki.is_empty() || serial.is_empty() || serial.len() > 20 {
            return Err(bad());
        }
        if aki != self.issuer_key_id {
            return Err(Problem::not_found(
                "the certID's authority key identifier is not this CA's issuer",
            ));
        }
        // A DER INTEGER's leading zero (positive sign) is not in our serials.
        while serial.len() > 1 && serial[0] == 0 {
            serial.remove(0);
        }
        Ok(hex::encode(serial))
    }

    /// The certID of one of our serials (lower-case hex), as the client
    /// sent it in `replaces`.
    pub fn serial_cert_id(&self, serial: &str) -> String {
        let bytes = hex::decode(serial).unwrap_or_default();
        format!("{}.{}", B64.encode(&self.issuer_key_id), B64.encode(bytes))
    }

    /// `GET renewalInfo/<certID>`. Revoked certificates and certificates an
    /// operator marked for early renewal get a window in the past, so
    /// clients renew at once; others the last third of their validity.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<RenewalInfo, Problem> {
        let serial = self.parse_cert_id(cert_id)?;
        let cert = self
            .store
            .certificate(&serial)
            .await?
            .ok_or_else(|| Problem::not_found("no certificate with this certID was issued"))?;
        let now = self.clock.unix();
        let retry_after = self.cfg.acme.ari_retry_after_secs;
        if cert.revoked_at.is_some() || cert.renew_early_at.is_some() {
            let url = &self.cfg.acme.ari_explanation_url;
            return Ok(RenewalInfo {
                start: now - 3600,
                end: now - 1800,
                explanation_url: (!url.is_empty()).then(|| url.clone()),
                retry_after,
            });
        }
        // The window of the certificate's profile, if the order that
        // issued it still names one this CA offers.
        let profile = match self.store.order(cert.order_id).await? {
            Some(o) => self.cfg.profile(&o.profile).cloned(),
            None => None,
        };
        let (start, end) = match profile {
            Some(p) => window_of(
                cert.not_before,
                cert.not_after,
                p.ari_window_divisor,
                p.ari_window_length_divisor,
            ),
            None => window(cert.not_before, cert.not_after),
        };
        Ok(RenewalInfo {
            start,
            end,
            explanation_url: None,
            retry_after,
        })
    }

    /// RFC 9773 §5: the certificate a newOrder `replaces` must exist, belong
    /// to the same account, share an identifier with the order, and not be
    /// replaced by another live order (the store checks that last part
    /// atomically when it creates the order). Returns its serial.
    pub(super) async fn check_replaces(
        &self,
        acct: &Account,
        cert_id: &str,
        names: &[Name],
    ) -> Result<String, Problem> {
        let serial = self.parse_cert_id(cert_id).map_err(|p| {
            if p.status == 404 {
                Problem::malformed(format!("replaces: {}", p.detail))
            } else {
                p
            }
        })?;
        let cert = self.store.certificate(&serial).await?.ok_or_else(|| {
            Problem::malformed(format!(
                "replaces: no certificate with serial {serial} was issued by this CA"
            ))
        })?;
        if cert.account_id != acct.id {
            return Err(Problem::unauthorized(
                "replaces: the certificate was issued to another account",
            ));
        }
        let shares = names.iter().any(|n| {
            cert.names
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&n.value()))
        });
        if !shares {
            return Err(Problem::malformed(
                "replaces: the order shares no identifier with the certificate it replaces",
            ));
        }
        Ok(serial)
    }
}

/// The default window: from two thirds of the validity (half for
/// short-lived certificates) for a fiftieth of the validity.
pub fn window(not_before: i64, not_after: i64) -> (i64, i64) {
    let validity = (not_after + 1 - not_before).max(1);
    let divisor = if validity < SHORT_LIVED_SECS { 2 } else { 3 };
    window_of(not_before, not_after, divisor, 50)
}

/// A profile's window: it opens when 1/`divisor` of the validity is left
/// and lasts 1/`length_divisor` of it.
pub fn window_of(not_before: i64, not_after: i64, divisor: u32, length_divisor: u32) -> (i64, i64) {
    // notAfter is inclusive (RFC 5280 §4.1.2.5).
    let validity = (not_after + 1 - not_before).max(1);
    let start = not_after - validity / i64::from(divisor.max(1));
    (
        start,
        start + (validity / i64::from(length_divisor.max(1))).max(1),
    )
}

/// The certID of a DER certificate: what a client computes.
pub fn cert_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })?;
    Some(format!(
        "{}.{}",
        B64.encode(aki),
        B64.encode(cert.raw_serial())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_day_window_is_in_the_last_third() {
        let nb = 1_000_000;
        let na = nb + 90 * 86_400 - 1;
        let (s, e) = window(nb, na);
        assert_eq!(s, na - 30 * 86_400);
        assert!(s < e && e < na);
        assert_eq!(e - s, 90 * 86_400 / 50);
        assert!(s - nb >= 2 * (na - nb) / 3);
    }

    #[test]
    fn a_profile_sets_its_own_window() {
        let (nb, na) = (0, 100 * 86_400 - 1);
        let (s, e) = window_of(nb, na, 4, 10);
        assert_eq!(s, na - 25 * 86_400);
        assert_eq!(e - s, 10 * 86_400);
        assert_eq!(window_of(nb, na, 3, 50), window(nb, na));
    }

    #[test]
    fn short_lived_window_is_at_half() {
        let nb = 0;
        let na = 6 * 86_400 - 1;
        let (s, e) = window(nb, na);
        assert_eq!(s, na - 3 * 86_400);
        assert!(e > s);
    }
}
