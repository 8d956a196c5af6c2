//! Certificate authority: the root/intermediate hierarchy (created on first
//! start, reused after) and issuance of end-entity certificates from CSRs.
//! INTERFACE STUB: implemented by the CA work; signatures are the contract.

use crate::config::Config;
use crate::problem::Problem;
use time::OffsetDateTime;

/// A parsed, signature-checked CSR.
#[derive(Debug, Clone)]
pub struct Csr {
    /// dNSName SANs and the CN (if any), lower-cased, de-duplicated, sorted.
    pub names: Vec<String>,
    /// The subject common name, lower-cased, if present.
    pub common_name: Option<String>,
    /// The CSR's SubjectPublicKeyInfo, byte for byte.
    pub spki_der: Vec<u8>,
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Lower-case hex of the serial number (no leading zeros beyond DER's).
    pub serial: String,
    pub der: Vec<u8>,
    /// Leaf first, then the intermediate, PEM.
    pub chain_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

pub struct Ca {}

impl Ca {
    /// Load the hierarchy from `cfg.data_dir`, creating it on first start.
    pub fn load_or_create(_cfg: &Config) -> anyhow::Result<Ca> {
        anyhow::bail!("CA not implemented yet")
    }

    pub fn root_pem(&self) -> &str {
        ""
    }

    pub fn intermediate_pem(&self) -> &str {
        ""
    }

    /// Certificate chain and key (PEM) for the HTTPS listener, issued by the
    /// root hierarchy for localhost, 127.0.0.1 and ::1; kept in the data dir
    /// and re-issued when missing or close to expiry.
    pub fn tls_listener_cert(&self, _now: OffsetDateTime) -> anyhow::Result<(String, String)> {
        anyhow::bail!("CA not implemented yet")
    }

    /// Issue a certificate for `names` with the CSR's public key.
    pub fn issue(
        &self,
        _csr: &Csr,
        _names: &[String],
        _now: OffsetDateTime,
    ) -> Result<IssuedCert, Problem> {
        Err(Problem::internal("CA not implemented yet"))
    }
}

/// Parse a DER CSR, verify its signature and key: `badCSR` for anything
/// malformed or unsigned, `badPublicKey` for keys other than RSA 2048–4096,
/// P-256 and P-384.
pub fn parse_csr(_der: &[u8]) -> Result<Csr, Problem> {
    Err(Problem::internal("CA not implemented yet"))
}

/// Whether the CSR's key is the same key as this JWK (account key reuse).
pub fn csr_key_matches_jwk(_csr: &Csr, _jwk: &josekit::jwk::Jwk) -> bool {
    false
}
