//! tls-alpn-01 (RFC 8737): a TLS handshake offering only ALPN `acme-tls/1`,
//! then checks on the self-signed certificate the server presents.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use x509_parser::prelude::*;

use super::http01::dial_order;
use super::{sanitize, Va, ValidationRecord};
use crate::problem::Problem;

/// The ALPN protocol of RFC 8737 §6.2.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// id-pe-acmeIdentifier, RFC 8737 §6.1.
pub const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// Accepts any certificate (it is self-signed by design) but still checks
/// the handshake signature with the certificate's key, so the peer must
/// hold the private key of the certificate it shows.
#[derive(Debug)]
pub struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_with_cert_key(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 fixes one algorithm per scheme; rustls checks the key's
        // algorithm against it when given the bare SubjectPublicKeyInfo.
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
        verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl AcceptAnyCert {
    /// Checks `dss` over `message` with the certificate's public key.
    /// rustls's own helpers parse the certificate with webpki, which refuses
    /// the (critical, unknown to it) acmeIdentifier extension every
    /// tls-alpn-01 certificate carries, so the key is taken out with
    /// x509-parser and handed to the provider's algorithms for the scheme.
    fn verify_with_cert_key(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let key = &parsed.public_key().subject_public_key.data;
        let algs = self
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        // Each algorithm fixes key type, curve and hash; one verifying means
        // the peer signed with this certificate's key under the scheme.
        if algs
            .iter()
            .any(|alg| alg.verify_signature(key, message, dss.signature()).is_ok())
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature,
            ))
        }
    }
}

/// The client configuration, built once: TLS 1.2+, ALPN `acme-tls/1` only.
pub fn client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    // Validation is a one-off handshake; resumption would only hide state.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Checks the leaf certificate (DER) of a tls-alpn-01 response: exactly one
/// SAN, a dNSName equal to `domain`, and a critical acmeIdentifier whose
/// value is OCTET STRING(SHA-256(key authorization)).
pub fn check_certificate(der: &[u8], domain: &str, key_authorization: &str) -> Result<(), Problem> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        Problem::unauthorized(format!(
            "Incorrect validation certificate for tls-alpn-01 challenge: cannot parse it: {}",
            sanitize(&e.to_string(), 100)
        ))
    })?;
    let bad = |why: String| {
        Problem::unauthorized(format!(
            "Incorrect validation certificate for tls-alpn-01 challenge. {why}"
        ))
    };

    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("Invalid or repeated subjectAltName extension".into()))?
        .ok_or_else(|| bad("Requested {domain} from the server but the certificate has no subjectAltName extension".replace("{domain}", domain)))?;
    let names = &san.value.general_names;
    // An IP identifier's certificate names its address as an iPAddress SAN
    // (RFC 8738 §6).
    let ip = domain.parse::<IpAddr>().ok();
    let ok = names.len() == 1
        && match (&names[0], ip) {
            (GeneralName::DNSName(n), None) => n.eq_ignore_ascii_case(domain),
            (GeneralName::IPAddress(b), Some(IpAddr::V4(a))) => *b == a.octets().as_slice(),
            (GeneralName::IPAddress(b), Some(IpAddr::V6(a))) => *b == a.octets().as_slice(),
            _ => false,
        };
    if !ok {
        let shown: Vec<String> = names
            .iter()
            .take(5)
            .map(|n| match n {
                GeneralName::DNSName(d) => sanitize(d, 64),
                GeneralName::IPAddress(b) => format!("IP {}", hex::encode(b)),
                other => sanitize(&format!("{other}"), 64),
            })
            .collect();
        return Err(bad(format!(
            "Requested {domain} from the server but the certificate must name exactly that one {}; it names: {}",
            if ip.is_some() { "IP address" } else { "DNS name" },
            shown.join(", ")
        )));
    }

    let acme_exts: Vec<&X509Extension> = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)
        .collect();
    let ext = match acme_exts.as_slice() {
        [one] => *one,
        [] => {
            return Err(bad(
                "Required extension acmeIdentifier (1.3.6.1.5.5.7.1.31) is missing".into(),
            ))
        }
        _ => {
            return Err(bad(
                "The acmeIdentifier extension appears more than once".into()
            ))
        }
    };
    if !ext.critical {
        return Err(bad("The acmeIdentifier extension must be critical".into()));
    }
    let digest = Sha256::digest(key_authorization.as_bytes());
    // extnValue content: DER OCTET STRING, tag 0x04, length 32, digest.
    let mut expected = vec![0x04, 0x20];
    expected.extend_from_slice(&digest);
    if ext.value != expected.as_slice() {
        let got = if ext.value.len() == 34 && ext.value[..2] == [0x04, 0x20] {
            hex::encode(&ext.value[2..])
        } else {
            format!(
                "malformed value {}",
                hex::encode(&ext.value[..ext.value.len().min(40)])
            )
        };
        return Err(bad(format!(
            "Expected acmeIdentifier value {} (SHA-256 of the key authorization), got {got}",
            hex::encode(digest)
        )));
    }
    Ok(())
}

/// The reverse-DNS name of an address (RFC 8738 §6, after RFC 1035
/// §3.5 and RFC 3596 §2.5): `4.3.2.1.in-addr.arpa`, or the 32 nibbles of
/// an IPv6 address, least significant first, under `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(72);
            for b in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

impl Va {
    pub(super) async fn tls_alpn01(
        &self,
        domain: &str,
        key_authorization: &str,
    ) -> Result<Vec<ValidationRecord>, Problem> {
        let port = self.cfg.tls_alpn01_port;
        // An IP identifier is dialled directly, with its reverse-DNS name
        // as the SNI (RFC 8738 §6).
        let (all, usable, sni) = match domain.parse::<IpAddr>() {
            Ok(ip) => {
                self.check_ip_target(ip)?;
                (vec![ip], vec![ip], reverse_name(ip))
            }
            Err(_) => {
                let resolved = self.dns.resolve(domain).await?;
                (resolved.all, resolved.usable, domain.to_string())
            }
        };
        let mut record = ValidationRecord {
            url: None,
            hostname: domain.to_string(),
            port: Some(port.to_string()),
            addresses_resolved: all.iter().map(|ip| ip.to_string()).collect(),
            address_used: None,
        };
        let server_name = ServerName::try_from(sni).map_err(|_| {
            Problem::malformed(format!("{domain:?} is not a valid TLS server name"))
        })?;

        // IPv6 first, then IPv4 if the IPv6 connection fails.
        let mut stream = None;
        let mut last_err = String::new();
        for addr in dial_order(&usable, port) {
            record.address_used = Some(addr.ip().to_string());
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = format!("{}: Error connecting to {addr}: {e}", addr.ip()),
            }
        }
        let Some(stream) = stream else {
            return Err(Problem::connection(last_err));
        };
        let used = record.address_used.clone().unwrap_or_default();
        let records = vec![record];

        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let tls = connector.connect(server_name, stream).await.map_err(|e| {
            Problem::tls(format!(
                "{used}: Error getting validation data: TLS handshake with {domain}:{port} failed: {}",
                sanitize(&e.to_string(), 200)
            ))
        })?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(ACME_TLS_ALPN) {
            return Err(Problem::tls(format!(
                "{used}: Cannot negotiate ALPN protocol \"acme-tls/1\" for tls-alpn-01 challenge (got {})",
                conn.alpn_protocol()
                    .map(|p| format!("{:?}", sanitize(&String::from_utf8_lossy(p), 32)))
                    .unwrap_or_else(|| "none".into())
            )));
        }
        let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
            return Err(Problem::tls(format!(
                "{used}: the server presented no certificate"
            )));
        };
        check_certificate(leaf.as_ref(), domain, key_authorization)?;
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CustomExtension, KeyPair};

    fn cert(names: &[&str], ext: Option<CustomExtension>) -> Vec<u8> {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        if let Some(e) = ext {
            p.custom_extensions.push(e);
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn digest(ka: &str) -> Vec<u8> {
        Sha256::digest(ka.as_bytes()).to_vec()
    }

    #[test]
    fn reverse_names_follow_rfc_8738() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn accepts_right_certificate() {
        let der = cert(
            &["a.example"],
            Some(CustomExtension::new_acme_identifier(&digest("ka"))),
        );
        check_certificate(&der, "a.example", "ka").unwrap();
        check_certificate(&der, "A.Example", "ka").unwrap();
    }

    #[test]
    fn refuses_wrong_digest_or_names() {
        let der = cert(
            &["a.example"],
            Some(CustomExtension::new_acme_identifier(&digest("other"))),
        );
        let p = check_certificate(&der, "a.example", "ka").unwrap_err();
        assert_eq!(p.kind, crate::problem::Kind::Unauthorized, "{p:?}");
        assert!(p.detail.contains("Expected acmeIdentifier"), "{}", p.detail);

        let der = cert(
            &["a.example", "b.example"],
            Some(CustomExtension::new_acme_identifier(&digest("ka"))),
        );
        assert!(check_certificate(&der, "a.example", "ka")
            .unwrap_err()
            .detail
            .contains("exactly"));

        let der = cert(
            &["b.example"],
            Some(CustomExtension::new_acme_identifier(&digest("ka"))),
        );
        assert!(check_certificate(&der, "a.example", "ka").is_err());

        let der = cert(&["a.example"], None);
        assert!(check_certificate(&der, "a.example", "ka")
            .unwrap_err()
            .detail
            .contains("missing"));

        let mut ext = CustomExtension::new_acme_identifier(&digest("ka"));
        ext.set_criticality(false);
        let der = cert(&["a.example"], Some(ext));
        assert!(check_certificate(&der, "a.example", "ka")
            .unwrap_err()
            .detail
            .contains("critical"));

        // A value that is not an OCTET STRING of 32 bytes.
        let ext = CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 31],
            vec![0x04, 0x01, 0x00],
        );
        let mut ext = ext;
        ext.set_criticality(true);
        let der = cert(&["a.example"], Some(ext));
        assert!(check_certificate(&der, "a.example", "ka")
            .unwrap_err()
            .detail
            .contains("malformed"));

        assert!(check_certificate(b"garbage", "a.example", "ka").is_err());
    }
}
