//! Finalization and certificates (RFC 8555 §7.4): checking the CSR
//! against the order, issuing exactly once, reading an account's
//! certificates, and the start-up backfill of certificate names.

use super::{error_doc, Ra};
use crate::ca;
use crate::core::*;
use crate::key::PublicKey;
use crate::problem::Problem;

impl Ra {
    /// finalize (RFC 8555 §7.4): check the CSR against the order, issue, and
    /// record, with the order moved to processing atomically so a race or a
    /// retry cannot issue twice. A bad CSR changes nothing.
    pub async fn finalize(
        &self,
        acct: &Account,
        id: OrderId,
        csr_der: &[u8],
    ) -> Result<Order, Problem> {
        let order = self.order(acct, id).await?;
        if order.status != OrderStatus::Ready {
            return Err(Problem::order_not_ready(format!(
                "order's status ({:?}) is not acceptable for finalization",
                order.status.as_str()
            )));
        }
        let csr = ca::parse_csr(csr_der)?;
        let spki_sha256 = spki_hash(&csr.spki_der);
        if self.store.key_blocked(&spki_sha256).await? {
            return Err(Problem::bad_csr(
                "the CSR's public key was revoked for keyCompromise and is blocked",
            ));
        }
        let account_key = serde_json::from_str(&acct.jwk)
            .ok()
            .and_then(|v| PublicKey::from_jwk(&v).ok());
        if account_key.as_ref() == Some(&csr.key) {
            return Err(Problem::bad_csr(
                "the certificate's public key must differ from the account key",
            ));
        }
        // The CSR's names, by type, must be exactly the order's identifiers.
        let wanted = |kind: IdentifierType| -> Vec<String> {
            let mut v: Vec<String> = order
                .identifiers
                .iter()
                .filter(|i| i.kind == kind.as_str())
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            v.sort();
            v
        };
        let (wanted_dns, wanted_ips) = (wanted(IdentifierType::Dns), wanted(IdentifierType::Ip));
        for (what, want, got) in [
            ("DNS names", &wanted_dns, &csr.names),
            ("IP addresses", &wanted_ips, &csr.ips),
        ] {
            if want != got {
                let missing: Vec<&String> = want.iter().filter(|n| !got.contains(n)).collect();
                let extra: Vec<&String> = got.iter().filter(|n| !want.contains(n)).collect();
                return Err(Problem::bad_csr(format!(
                    "CSR {what} must equal the order's identifiers; missing {missing:?}, not in the order {extra:?}"
                )));
            }
        }
        let profile = self.cfg.profile(&order.profile).ok_or_else(|| {
            Problem::server_internal(format!(
                "the order's profile {:?} is no longer offered; create a new order",
                order.profile
            ))
        })?;
        let now = self.clock.now();
        if !self.store.begin_finalize(id, now.unix_timestamp()).await? {
            return Err(Problem::order_not_ready(
                "order is no longer ready (finalized concurrently or an authorization changed)",
            ));
        }
        // The CN, if the CSR had one, goes first so it becomes the subject
        // CN; the addresses after the names.
        let mut names = wanted_dns;
        if let Some(cn) = &csr.common_name {
            if let Some(pos) = names.iter().position(|n| n == cn) {
                let cn = names.remove(pos);
                names.insert(0, cn);
            }
        }
        names.extend(wanted_ips);
        let issued = match self.ca.issue(&csr, &names, profile, now) {
            Ok(c) => c,
            Err(p) => {
                self.store
                    .fail_order(id, &error_doc(&p), now.unix_timestamp())
                    .await?;
                self.release_reservation(id).await;
                return Err(p);
            }
        };
        let cert = Certificate {
            revoked_at: None,
            revoked_reason: None,
            serial: issued.serial.clone(),
            account_id: acct.id,
            order_id: id,
            der: issued.der,
            chain_pem: issued.chain_pem,
            not_before: issued.not_before.unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
            issued_at: now.unix_timestamp(),
            names: names.clone(),
            renew_early_at: None,
            spki_sha256,
        };
        if let Err(e) = self
            .store
            .complete_order(id, &cert, now.unix_timestamp())
            .await
        {
            let p = Problem::from(e);
            self.store
                .fail_order(id, &error_doc(&p), now.unix_timestamp())
                .await?;
            self.release_reservation(id).await;
            return Err(p);
        }
        tracing::info!(order = id.0, serial = %issued.serial, names = ?names, "certificate issued");
        crate::metrics::issuance();
        // What complete_order stored; a valid order stays valid.
        Ok(Order {
            status: OrderStatus::Valid,
            cert_serial: Some(issued.serial),
            updated_at: now.unix_timestamp(),
            ..order
        })
    }

    pub async fn certificate(&self, acct: &Account, serial: &str) -> Result<Certificate, Problem> {
        self.store
            .certificate(serial)
            .await?
            .filter(|c| c.account_id == acct.id)
            .ok_or_else(|| Problem::not_found("no such certificate"))
    }

    /// Certificates issued before Cairn recorded their names (schema 0003)
    /// get them now, read from the certificates themselves, so renewal
    /// detection, `cairn admin certs list --name` and key blocking cover
    /// them too. Runs once at start, in batches; idempotent, so instances
    /// starting together only repeat each other's work.
    pub async fn backfill_certificate_names(&self) -> Result<u64, Problem> {
        let mut done = 0;
        loop {
            let batch = self.store.certificates_without_names(200).await?;
            if batch.is_empty() {
                return Ok(done);
            }
            for (serial, der) in batch {
                let (names, spki) = match x509_parser::parse_x509_certificate(&der) {
                    Ok((_, cert)) => (dns_names(&cert), Some(spki_hash(cert.public_key().raw))),
                    Err(e) => {
                        tracing::warn!(serial = %serial, "stored certificate does not parse: {e}");
                        (Vec::new(), None)
                    }
                };
                // An unparsable or nameless certificate still gets a set
                // hash (of no names), so the backfill ends.
                self.store
                    .set_certificate_names(&serial, &names, spki.as_deref())
                    .await?;
                done += 1;
            }
        }
    }
}

/// The dNSName SANs of a certificate, as ordered in it.
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                ca::san_ip(b).map(|ip| ip.to_string())
            }
            _ => None,
        })
        .collect()
}
