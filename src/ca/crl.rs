//! Signing certificate revocation lists (RFC 5280 §5): one full CRL per
//! issuer, signed by the intermediate that issues end-entity certificates.
//! What goes in it (which certificates, which number) is decided by the
//! publisher in `crate::crl_publisher`; this only encodes and signs.

use super::Ca;
use crate::core::RevokedEntry;
use crate::problem::Problem;
use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

impl Ca {
    /// A DER X.509 v2 CRL listing `entries`, signed by the intermediate.
    ///
    /// `number` is the CRL number extension (RFC 5280 §5.2.3; must grow with
    /// every CRL), `this_update`/`next_update` are Unix seconds. Each entry
    /// carries its revocation date and, unless it is 0 (unspecified), its
    /// reason code: §5.3.1 says to omit the extension rather than write 0.
    /// The authority key identifier is the intermediate's subject key
    /// identifier, the same value issued certificates carry in theirs, so a
    /// relying party matches the CRL to the certificate's issuer.
    ///
    /// `entries` is taken, not borrowed: a CRL of 10^4 entries is the
    /// largest thing the server builds, and each stage (entries, rcgen's
    /// parameters, its DER buffers) is let go of before the next grows.
    pub fn sign_crl(
        &self,
        number: i64,
        this_update: i64,
        next_update: i64,
        entries: Vec<RevokedEntry>,
    ) -> Result<Vec<u8>, Problem> {
        if number < 0 {
            return Err(Problem::internal(format!("negative CRL number {number}")));
        }
        let mut revoked_certs = Vec::with_capacity(entries.len());
        for e in entries {
            revoked_certs.push(RevokedCertParams {
                serial_number: crl_serial(&e.serial)?,
                revocation_time: unix_time(e.revoked_at)?,
                reason_code: revocation_reason(e.reason)?,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: unix_time(this_update)?,
            next_update: unix_time(next_update)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.intermediate_key_id_method(),
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| Problem::internal(format!("signing a CRL: {e}")))?;
        // Without the parameters it keeps, before the copy.
        Ok(rustls::pki_types::CertificateRevocationListDer::from(crl).to_vec())
    }

    /// The key identifier of the intermediate as issued certificates name it
    /// in their AKI: rcgen's `Issuer` uses the intermediate's SKI when it has
    /// one and a SHA-256 of its key otherwise, so the CRL does the same. (The
    /// CRL parameters default to SHA-256 regardless, which would not match
    /// an intermediate whose SKI was computed some other way.)
    fn intermediate_key_id_method(&self) -> KeyIdMethod {
        let ski = super::parse_cert(&self.intermediate_der, "intermediate")
            .ok()
            .and_then(|c| {
                c.iter_extensions()
                    .find_map(|ext| match ext.parsed_extension() {
                        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                        _ => None,
                    })
            });
        match ski {
            Some(id) => KeyIdMethod::PreSpecified(id),
            None => KeyIdMethod::Sha256,
        }
    }
}

/// The stored serial is the lower-case hex of the DER INTEGER's content;
/// the CRL must carry the very same integer.
fn crl_serial(hex_serial: &str) -> Result<SerialNumber, Problem> {
    let bytes = hex::decode(hex_serial)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Problem::internal(format!("bad serial in database: {hex_serial:?}")))?;
    Ok(SerialNumber::from_slice(&bytes))
}

/// RFC 5280 §5.3.1 reason codes. 0 becomes no extension at all. Anything the
/// standard does not define is refused: the database only holds what the RA
/// accepted, so an unknown code is corruption, and a CRL with a wrong reason
/// would be worse than a late one.
fn revocation_reason(code: i64) -> Result<Option<RevocationReason>, Problem> {
    use RevocationReason::*;
    Ok(Some(match code {
        0 => return Ok(None),
        1 => KeyCompromise,
        2 => CaCompromise,
        3 => AffiliationChanged,
        4 => Superseded,
        5 => CessationOfOperation,
        6 => CertificateHold,
        8 => RemoveFromCrl,
        9 => PrivilegeWithdrawn,
        10 => AaCompromise,
        other => {
            return Err(Problem::internal(format!(
                "revocation reason {other} in database is not an RFC 5280 reason"
            )))
        }
    }))
}

fn unix_time(secs: i64) -> Result<OffsetDateTime, Problem> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| Problem::internal(format!("time {secs} out of range: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    use x509_parser::x509::X509Version;

    fn ca(dir: &std::path::Path, key_type: &str) -> Ca {
        let src = Sources {
            preset: Some("test".into()),
            file: None,
            data_dir: Some(dir.to_path_buf()),
        };
        let mut cfg = Config::load_with_env(&src, |_| None).expect("test preset loads");
        cfg.ca.key_type = key_type.into();
        cfg.ca.issuer_base_url = "http://127.0.0.1:15000".into();
        Ca::load_or_create(&cfg).expect("CA loads")
    }

    fn entry(serial: &str, revoked_at: i64, reason: i64) -> RevokedEntry {
        RevokedEntry {
            serial: serial.into(),
            revoked_at,
            reason,
        }
    }

    fn aki(crl: &CertificateRevocationList<'_>) -> Vec<u8> {
        crl.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("CRL has an AKI with a key identifier")
    }

    #[test]
    fn signed_crl_verifies_and_lists_entries_with_reasons() {
        for key_type in ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] {
            let dir = tempfile::tempdir().unwrap();
            let ca = ca(dir.path(), key_type);
            let now = 1_750_000_000;
            let entries = [
                entry("1a2b3c", now - 100, 0),
                entry("7f00000000000000000000000000aa01", now - 50, 1),
                entry("0102", now - 10, 4),
                entry("40", now - 5, 5),
            ];
            let der = ca.sign_crl(7, now, now + 86400, entries.to_vec()).unwrap();
            let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
            assert!(rest.is_empty());

            let int_der = &ca.intermediate_der;
            let (_, int) = x509_parser::certificate::X509Certificate::from_der(int_der).unwrap();
            crl.verify_signature(int.public_key())
                .unwrap_or_else(|e| panic!("{key_type}: CRL signature: {e}"));
            assert_eq!(crl.issuer().as_raw(), int.subject().as_raw());
            assert_eq!(crl.version(), Some(X509Version::V2));
            assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".into()));
            assert_eq!(crl.last_update().timestamp(), now);
            assert_eq!(crl.next_update().map(|t| t.timestamp()), Some(now + 86400));

            let int_ski = int
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                    _ => None,
                })
                .expect("intermediate has an SKI");
            assert_eq!(aki(&crl), int_ski);

            let got: Vec<(String, i64, Option<u8>)> = crl
                .iter_revoked_certificates()
                .map(|r| {
                    (
                        hex::encode(r.raw_serial()),
                        r.revocation_date.timestamp(),
                        r.reason_code().map(|(_, c)| c.0),
                    )
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    ("1a2b3c".into(), now - 100, None),
                    ("7f00000000000000000000000000aa01".into(), now - 50, Some(1)),
                    ("0102".into(), now - 10, Some(4)),
                    ("40".into(), now - 5, Some(5)),
                ],
                "{key_type}"
            );
        }
    }

    #[test]
    fn issued_certificates_point_at_the_crl_and_share_its_aki() {
        use x509_parser::extensions::{DistributionPointName, GeneralName};
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "ecdsa-p256");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        let csr = crate::ca::Csr {
            names: vec!["crl.example.com".into()],
            ips: Vec::new(),
            common_name: None,
            key: crate::key::PublicKey::from_spki_der(&spki_der).unwrap(),
            spki_der,
        };
        let issued = ca
            .issue(
                &csr,
                &csr.names,
                &crate::config::Config::test_profile("classic"),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.der).unwrap();
        let mut uris = Vec::new();
        let mut cert_aki = None;
        for ext in cert.iter_extensions() {
            match ext.parsed_extension() {
                ParsedExtension::CRLDistributionPoints(dps) => {
                    for dp in dps.iter() {
                        if let Some(DistributionPointName::FullName(names)) = &dp.distribution_point
                        {
                            for n in names {
                                if let GeneralName::URI(u) = n {
                                    uris.push(u.to_string());
                                }
                            }
                        }
                    }
                }
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    cert_aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                _ => {}
            }
        }
        assert_eq!(uris, ["http://127.0.0.1:15000/crl/0"]);

        let der = ca
            .sign_crl(1, 1_750_000_000, 1_750_000_060, Vec::new())
            .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(Some(aki(&crl)), cert_aki);
    }

    #[test]
    fn empty_crl_omits_revoked_list_and_numbers_grow() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "ecdsa-p256");
        let now = 1_750_000_000;
        for number in [1i64, 2, 255, 256, 1 << 40] {
            let der = ca.sign_crl(number, now, now + 60, Vec::new()).unwrap();
            let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
            assert_eq!(crl.iter_revoked_certificates().count(), 0);
            assert_eq!(
                crl.crl_number().map(|n| n.to_string()),
                Some(number.to_string())
            );
        }
    }

    #[test]
    fn bad_inputs_are_internal_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "ecdsa-p256");
        let now = 1_750_000_000;
        // nextUpdate must follow thisUpdate.
        assert!(ca.sign_crl(1, now, now, Vec::new()).is_err());
        assert!(ca.sign_crl(-1, now, now + 60, Vec::new()).is_err());
        for bad in [entry("zz", now, 0), entry("", now, 0), entry("01", now, 7)] {
            assert!(ca.sign_crl(1, now, now + 60, vec![bad]).is_err());
        }
    }
}
