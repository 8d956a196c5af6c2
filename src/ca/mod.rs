//! Certificate authority: the root/intermediate hierarchy (created on first
//! start, reused after) and issuance of end-entity certificates from CSRs.
//! Keys are loaded once at start; issuance only builds and signs.

// `Problem` is the crate's one error type and the interface returns it by
// value; boxing it here alone would buy nothing.
#![allow(clippy::result_large_err)]

mod crl;
mod csr;
mod store;

use crate::config::{Config, ProfileConfig};
use crate::key::PublicKey;
use crate::problem::Problem;
use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use csr::SpkiKey;
use store::{CERT_MODE, KEY_MODE};

/// Lifetime of the generated root.
const ROOT_VALIDITY: Duration = Duration::days(3652);
/// Lifetime of the generated intermediate.
const INTERMEDIATE_VALIDITY: Duration = Duration::days(1826);
/// Lifetime of the HTTPS listener's certificate.
const LISTENER_VALIDITY: Duration = Duration::days(365);
/// The listener certificate is replaced when it has less than this left.
const LISTENER_RENEW_BEFORE: Duration = Duration::days(30);
/// Certificates start this far in the past, so a client whose clock is a
/// little behind ours does not see a certificate from the future; a
/// subscriber certificate by at most a tenth of its validity, so one of a
/// few seconds (a suite watching its client renew) is still valid when it
/// arrives.
const BACKDATE: Duration = Duration::minutes(1);

/// A parsed, signature-checked CSR.
#[derive(Debug, Clone)]
pub struct Csr {
    /// dNSName SANs and the CN (if any and not an IP address), lower-cased,
    /// de-duplicated, sorted.
    pub names: Vec<String>,
    /// iPAddress SANs (and a CN that is an address), canonical text,
    /// de-duplicated, sorted.
    pub ips: Vec<String>,
    /// The subject common name, lower-cased, if present and a DNS name.
    pub common_name: Option<String>,
    /// The CSR's SubjectPublicKeyInfo, byte for byte.
    pub spki_der: Vec<u8>,
    /// The same key, canonical (`crate::key`), for comparisons.
    pub key: PublicKey,
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

/// The loaded hierarchy. Cheap to share: everything issuance needs (the
/// intermediate's key, name and key identifier) is parsed once at start.
pub struct Ca {
    data_dir: PathBuf,
    root_pem: String,
    intermediate_pem: String,
    intermediate_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    /// DER of the authorityInfoAccess extension value, if a base URL is known.
    aia: Option<Vec<u8>>,
    /// The CRL distribution point URL (`<issuer base>/crl/0`), if a base URL
    /// is known.
    crl_url: Option<String>,
}

/// Paths of the hierarchy's files.
struct Paths {
    root: PathBuf,
    root_key: PathBuf,
    intermediate: PathBuf,
    intermediate_key: PathBuf,
    published_root: PathBuf,
}

impl Paths {
    fn new(data_dir: &Path) -> Paths {
        let ca = data_dir.join("ca");
        Paths {
            root: ca.join("root.pem"),
            root_key: ca.join("root-key.pem"),
            intermediate: ca.join("intermediate.pem"),
            intermediate_key: ca.join("intermediate-key.pem"),
            published_root: data_dir.join("root.pem"),
        }
    }
}

impl Ca {
    /// Load the hierarchy from `cfg.data_dir`, creating it on first start.
    ///
    /// Files are written in the order root key, root, intermediate key,
    /// intermediate, so whatever a crash leaves behind is completed on the
    /// next start. Existing keys are never replaced: a root key without its
    /// certificate gets a new certificate for the same key, and an
    /// intermediate that does not match its key or root stops startup.
    ///
    /// Several instances may share the data directory (see the README's
    /// production notes): an exclusive lock on `ca/.lock` makes the first
    /// to start create the hierarchy and every other one load it.
    pub fn load_or_create(cfg: &Config) -> anyhow::Result<Ca> {
        crate::config::ensure_dir(&cfg.data_dir)?;
        store::create_private_dir(&cfg.data_dir.join("ca"))?;
        let _lock = lock_file(&cfg.data_dir.join("ca").join(".lock"))?;
        Self::load_or_create_locked(cfg)
    }

    fn load_or_create_locked(cfg: &Config) -> anyhow::Result<Ca> {
        let paths = Paths::new(&cfg.data_dir);
        let now = OffsetDateTime::now_utc();
        // The two keys are independent, and generating them (RSA above
        // all) is most of a first start: the intermediate's is made beside
        // the root's.
        let mut int_key_ahead = (!paths.intermediate_key.exists()).then(|| {
            let key_type = cfg.ca.key_type.clone();
            std::thread::spawn(move || generate_key(&key_type))
        });

        // Root.
        let mut root_key = match store::read_optional(&paths.root_key)? {
            Some(pem) => Some(load_key(&pem, &paths.root_key)?),
            None => None,
        };
        let mut root_pem = store::read_optional(&paths.root)?;
        if root_key.is_none() && root_pem.is_none() {
            if paths.intermediate.exists() || paths.intermediate_key.exists() {
                bail!(
                    "{} exists but neither {} nor {} does; refusing to create a new root \
                     under an existing intermediate",
                    paths.intermediate.display(),
                    paths.root.display(),
                    paths.root_key.display()
                );
            }
            let key = generate_key(&cfg.ca.key_type)?;
            store::write_atomic(&paths.root_key, key.serialize_pem().as_bytes(), KEY_MODE)?;
            root_key = Some(key);
        }
        let root_pem = match root_pem.take() {
            Some(pem) => pem,
            None => {
                let key = root_key
                    .as_ref()
                    .ok_or_else(|| anyhow!("root key missing"))?;
                let pem = root_params(&cfg.ca.root_name, now)
                    .self_signed(key)
                    .context("signing the root")?
                    .pem();
                store::write_atomic(&paths.root, pem.as_bytes(), CERT_MODE)?;
                pem
            }
        };
        let root_der = store::pem_certificate(&root_pem, &paths.root.display().to_string())?;
        let root_cert = parse_cert(&root_der, "root")?;
        if let Some(key) = &root_key {
            if key.subject_public_key_info() != root_cert.public_key().raw {
                bail!(
                    "{} does not hold the key of {}",
                    paths.root_key.display(),
                    paths.root.display()
                );
            }
        }

        // Intermediate.
        let int_key = match store::read_optional(&paths.intermediate_key)? {
            Some(pem) => Some(load_key(&pem, &paths.intermediate_key)?),
            None => None,
        };
        let int_pem = store::read_optional(&paths.intermediate)?;
        let (int_key, int_pem) = match (int_key, int_pem) {
            (Some(key), Some(pem)) => (key, pem),
            (key, _) => {
                let root_key = root_key.as_ref().ok_or_else(|| {
                    anyhow!(
                        "the intermediate is incomplete and {} is missing, so it cannot be issued",
                        paths.root_key.display()
                    )
                })?;
                let key = match key {
                    Some(key) => key,
                    None => {
                        let key = match int_key_ahead.take() {
                            Some(ahead) => ahead
                                .join()
                                .map_err(|_| anyhow!("generating the intermediate key failed"))??,
                            None => generate_key(&cfg.ca.key_type)?,
                        };
                        let pem = key.serialize_pem();
                        store::write_atomic(&paths.intermediate_key, pem.as_bytes(), KEY_MODE)?;
                        key
                    }
                };
                let root_issuer = Issuer::from_ca_cert_der(&root_der.as_slice().into(), root_key)
                    .context("reading the root as an issuer")?;
                let pem = intermediate_params(&cfg.ca.intermediate_name, now)
                    .signed_by(&key, &root_issuer)
                    .context("signing the intermediate")?
                    .pem();
                store::write_atomic(&paths.intermediate, pem.as_bytes(), CERT_MODE)?;
                (key, pem)
            }
        };
        let int_der = store::pem_certificate(&int_pem, &paths.intermediate.display().to_string())?;
        let int_cert = parse_cert(&int_der, "intermediate")?;
        if int_key.subject_public_key_info() != int_cert.public_key().raw {
            bail!(
                "{} does not hold the key of {}",
                paths.intermediate_key.display(),
                paths.intermediate.display()
            );
        }
        // Same key is not enough: verifiers also match the issuer name.
        if int_cert.issuer().as_raw() != root_cert.subject().as_raw() {
            bail!(
                "the issuer of {} is not the subject of {}",
                paths.intermediate.display(),
                paths.root.display()
            );
        }
        int_cert
            .verify_signature(Some(root_cert.public_key()))
            .map_err(|e| {
                anyhow!(
                    "{} is not signed by {}: {e}",
                    paths.intermediate.display(),
                    paths.root.display()
                )
            })?;

        // Clients find the root here; keep it identical to ca/root.pem.
        if store::read_optional(&paths.published_root)?.as_deref() != Some(root_pem.as_str()) {
            store::write_atomic(&paths.published_root, root_pem.as_bytes(), CERT_MODE)?;
        }

        let issuer = Issuer::from_ca_cert_der(&int_der.as_slice().into(), int_key)
            .context("reading the intermediate as an issuer")?;
        let base = cfg.issuer_base_url();
        let aia = if base.is_empty() {
            None
        } else {
            Some(aia_ca_issuers(&format!("{base}/intermediates/0"))?)
        };
        // Where `crate::crl_publisher` serves the intermediate's CRL.
        let crl_url = (!base.is_empty()).then(|| format!("{base}/crl/0"));
        Ok(Ca {
            data_dir: cfg.data_dir.clone(),
            root_pem,
            intermediate_pem: int_pem,
            intermediate_der: int_der,
            issuer,
            aia,
            crl_url,
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The issuer of end-entity certificates, DER.
    pub fn intermediate_der(&self) -> &[u8] {
        &self.intermediate_der
    }

    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    /// The root's and the intermediate's private keys (PKCS#8 PEM), read
    /// from the data directory: what Pebble's management interface serves
    /// at `/root-keys/0` and `/intermediate-keys/0`. The root key may have
    /// been moved offline (then `None`).
    pub fn key_pems(&self) -> anyhow::Result<(Option<String>, Option<String>)> {
        let paths = Paths::new(&self.data_dir);
        Ok((
            store::read_optional(&paths.root_key)?,
            store::read_optional(&paths.intermediate_key)?,
        ))
    }

    /// Certificate chain and key (PEM) for the HTTPS listener, issued by the
    /// root hierarchy for localhost, 127.0.0.1 and ::1; kept in the data dir
    /// and re-issued when missing or close to expiry.
    pub fn tls_listener_cert(&self, now: OffsetDateTime) -> anyhow::Result<(String, String)> {
        let dir = self.data_dir.join("tls");
        store::create_private_dir(&dir)?;
        let _lock = lock_file(&dir.join(".lock"))?;
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        if let (Some(chain), Some(key)) = (
            store::read_optional(&cert_path)?,
            store::read_optional(&key_path)?,
        ) {
            if self.listener_cert_usable(&chain, &key, now) {
                return Ok((chain, key));
            }
        }

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the listener key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        params.serial_number = Some(random_serial().0);
        params.not_before = whole_seconds(now) - BACKDATE;
        params.not_after = params.not_before + LISTENER_VALIDITY;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the listener certificate")?;
        let chain = format!("{}{}", cert.pem(), self.intermediate_pem);
        let key_pem = key.serialize_pem();
        // Key first: a crash between the two writes leaves a certificate that
        // does not match the key, which the next start detects and replaces.
        store::write_atomic(&key_path, key_pem.as_bytes(), KEY_MODE)?;
        store::write_atomic(&cert_path, chain.as_bytes(), CERT_MODE)?;
        Ok((chain, key_pem))
    }

    /// Whether a stored listener chain and key can be served as they are.
    fn listener_cert_usable(&self, chain: &str, key: &str, now: OffsetDateTime) -> bool {
        let Ok(certs) = store::pem_certificates(chain) else {
            return false;
        };
        let [leaf_der, int_der] = certs.as_slice() else {
            return false;
        };
        if *int_der != self.intermediate_der {
            return false;
        }
        let (Ok(leaf), Ok(int)) = (
            parse_cert(leaf_der, "listener"),
            parse_cert(&self.intermediate_der, "intermediate"),
        ) else {
            return false;
        };
        if leaf.verify_signature(Some(int.public_key())).is_err() {
            return false;
        }
        if leaf.validity().not_after.to_datetime() - now < LISTENER_RENEW_BEFORE {
            return false;
        }
        match KeyPair::from_pem(key) {
            Ok(k) => k.subject_public_key_info() == leaf.public_key().raw,
            Err(_) => false,
        }
    }

    /// Issue a certificate for `names` with the CSR's public key, shaped by
    /// `profile` (validity, CN, SKID, key usages).
    ///
    /// `names` go into the SAN extension in the given order: an IP address
    /// (canonical text; policy never passes a DNS name that parses as one)
    /// as an iPAddress, anything else as a dNSName. With the profile's
    /// `common_name`, the first DNS name is also the subject CN when it
    /// fits (64 characters). The caller decides which names are
    /// authorized; this only refuses names that cannot be encoded.
    pub fn issue(
        &self,
        csr: &Csr,
        names: &[String],
        profile: &ProfileConfig,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, Problem> {
        let key = SpkiKey::from_spki_der(&csr.spki_der)?;
        if names.is_empty() {
            return Err(Problem::bad_csr("no names to certify"));
        }
        let mut sans = Vec::with_capacity(names.len());
        let mut first_dns = None;
        for name in names {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                continue;
            }
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|_| Problem::bad_csr(format!("{name:?} is not a valid DNS name")))?;
            sans.push(SanType::DnsName(ia5));
            first_dns.get_or_insert(name);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = first_dns.filter(|n| profile.common_name && n.len() <= 64) {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.subject_alt_names = sans;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let validity = i64::try_from(profile.validity_secs)
            .map_err(|_| Problem::internal("certificate validity overflows"))?;
        let not_before = whole_seconds(now) - BACKDATE.min(Duration::seconds(validity / 10));
        let not_after = not_before
            .checked_add(Duration::seconds(validity))
            .ok_or_else(|| Problem::internal("certificate validity overflows"))?;
        params.not_before = not_before;
        params.not_after = not_after;
        if profile.subject_key_id {
            // rcgen writes the SKID together with basicConstraints CA:FALSE.
            params.is_ca = IsCa::ExplicitNoCa;
        } else {
            // No SKID: basicConstraints (critical, CA:FALSE) written by hand.
            params.is_ca = IsCa::NoCa;
            let mut bc = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
            bc.set_criticality(true);
            params.custom_extensions.push(bc);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if profile.key_encipherment && matches!(key.public_key, PublicKey::Rsa { .. }) {
            // TLS 1.2 RSA key exchange encrypts to the certificate's key.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if profile.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        if let Some(aia) = &self.aia {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_AUTHORITY_INFO_ACCESS,
                    aia.clone(),
                ));
        }
        if let Some(url) = &self.crl_url {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }

        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Problem::internal(format!("signing a certificate: {e}")))?;
        let der = cert.der().to_vec();
        // The invariant that once failed (see SpkiKey): certify exactly the
        // key the client sent, or nothing.
        let issued_spki_ok = X509Certificate::from_der(&der)
            .map(|(_, c)| c.public_key().raw == csr.spki_der.as_slice())
            .unwrap_or(false);
        if !issued_spki_ok {
            return Err(Problem::internal(
                "issued certificate's public key differs from the CSR's",
            ));
        }
        Ok(IssuedCert {
            serial: serial_hex,
            chain_pem: format!("{}{}", cert.pem(), self.intermediate_pem),
            der,
            not_before,
            not_after,
        })
    }
}

/// Parse a DER CSR, verify its signature and key: `badCSR` for anything
/// malformed or unsigned and for keys Cairn does not certify (the key
/// policy, `crate::key`: RSA 2048, 3072 or 4096 bits with e = 65537, P-256,
/// P-384).
///
/// Names are the dNSName SANs plus the subject CN, lower-cased, sorted and
/// de-duplicated; any other kind of SAN is `badCSR`. CSRs signed with SHA-1
/// are refused.
pub fn parse_csr(der: &[u8]) -> Result<Csr, Problem> {
    csr::parse(der)
}

/// The address of an iPAddress SAN's octets (4 or 16 of them).
pub fn san_ip(octets: &[u8]) -> Option<std::net::IpAddr> {
    match octets.len() {
        4 => <[u8; 4]>::try_from(octets).ok().map(Into::into),
        16 => <[u8; 16]>::try_from(octets).ok().map(Into::into),
        _ => None,
    }
}

const OID_AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// A random positive 128-bit serial: 16 bytes, top bit clear so DER needs no
/// sign byte, first byte non-zero so DER keeps all 16 bytes and the hex form
/// is exactly the DER content.
fn random_serial() -> (SerialNumber, String) {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    loop {
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes[0] &= 0x7f;
        if bytes[0] != 0 {
            break;
        }
    }
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// Certificates carry whole seconds; drop the rest so the times we report
/// are the times in the certificate.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

fn generate_key(key_type: &str) -> anyhow::Result<KeyPair> {
    match key_type {
        "ecdsa-p256" => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
        "ecdsa-p384" => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?),
        "rsa-2048" => {
            // rcgen over ring cannot generate RSA keys; openssl can, and ring
            // signs with the PKCS#8 it produces.
            let rsa = openssl::rsa::Rsa::generate(2048).context("generating an RSA key")?;
            let pkcs8 = openssl::pkey::PKey::from_rsa(rsa)?.private_key_to_pkcs8()?;
            Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                &pkcs8.into(),
                &rcgen::PKCS_RSA_SHA256,
            )?)
        }
        other => bail!("ca.key_type: unsupported key type {other:?}"),
    }
}

fn load_key(pem: &str, path: &Path) -> anyhow::Result<KeyPair> {
    KeyPair::from_pem(pem).with_context(|| format!("reading the key in {}", path.display()))
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> anyhow::Result<X509Certificate<'a>> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| anyhow!("parsing the {what}: {e}"))?;
    Ok(cert)
}

fn ca_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn root_params(name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(name);
    params.serial_number = Some(random_serial().0);
    params.not_before = whole_seconds(now) - BACKDATE;
    params.not_after = params.not_before + ROOT_VALIDITY;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn intermediate_params(name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(name);
    params.serial_number = Some(random_serial().0);
    params.not_before = whole_seconds(now) - BACKDATE;
    params.not_after = params.not_before + INTERMEDIATE_VALIDITY;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// DER of an authorityInfoAccess value with one caIssuers URI (RFC 5280
/// §4.2.2.1), written by hand because rcgen has no builder for it.
fn aia_ca_issuers(url: &str) -> anyhow::Result<Vec<u8>> {
    if !url.is_ascii() {
        bail!("ca.issuer_base_url must be ASCII: {url:?}");
    }
    // id-ad-caIssuers, 1.3.6.1.5.5.7.48.2
    const CA_ISSUERS: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let mut access = CA_ISSUERS.to_vec();
    // uniformResourceIdentifier: [6] IMPLICIT IA5String
    access.extend(der_tlv(0x86, url.as_bytes()));
    Ok(der_tlv(0x30, &der_tlv(0x30, &access)))
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend(&bytes[skip..]);
    }
    out.extend(body);
    out
}

#[cfg(test)]
mod tests;

/// An exclusive advisory lock held until the returned file is dropped.
fn lock_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(f)
}
