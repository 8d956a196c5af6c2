//! http-01 (RFC 8555 §8.3): GET the key authorization over plain HTTP,
//! following a bounded number of redirects by hand so every hop goes
//! through our resolver, our address policy and our port rules.

use std::net::{IpAddr, SocketAddr};

use url::Url;

use super::{sanitize, Va, ValidationRecord};
use crate::problem::Problem;

const USER_AGENT: &str = concat!("Cairn-VA/", env!("CARGO_PKG_VERSION"));

impl Va {
    pub(super) async fn http01(
        &self,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<Vec<ValidationRecord>, Problem> {
        let port = self.cfg.http01_port;
        // An IP identifier is dialled directly, IPv6 in brackets (RFC 8738 §7.1).
        let ip_identifier = domain.parse::<IpAddr>().ok();
        let host = match ip_identifier {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            _ => domain.to_string(),
        };
        let start = format!("http://{host}:{port}/.well-known/acme-challenge/{token}");
        let mut url = Url::parse(&start)
            .map_err(|e| Problem::malformed(format!("cannot build http-01 URL {start:?}: {e}")))?;
        let mut records = Vec::new();
        let mut redirects = 0usize;

        loop {
            let hop_port = url.port_or_known_default().unwrap_or(port);
            let (host, all, targets) = match url.host() {
                Some(url::Host::Domain(h)) => {
                    let host = h.to_ascii_lowercase();
                    let resolved = self.dns.resolve(&host).await?;
                    let targets = dial_order(&resolved.usable, hop_port);
                    (host, resolved.all, targets)
                }
                // An IP identifier's own address (RFC 8738 §7.1), also when
                // its server redirects to it; any other address is refused.
                Some(url::Host::Ipv4(a)) if ip_identifier == Some(IpAddr::V4(a)) => {
                    self.check_ip_target(IpAddr::V4(a))?;
                    (a.to_string(), vec![IpAddr::V4(a)], vec![SocketAddr::new(a.into(), hop_port)])
                }
                Some(url::Host::Ipv6(a)) if ip_identifier == Some(IpAddr::V6(a)) => {
                    self.check_ip_target(IpAddr::V6(a))?;
                    (a.to_string(), vec![IpAddr::V6(a)], vec![SocketAddr::new(a.into(), hop_port)])
                }
                _ => {
                    return Err(Problem::connection(format!(
                        "Invalid host in {url}: only domain names (or the IP identifier's own address) are supported"
                    )))
                }
            };
            let mut record = ValidationRecord {
                url: Some(url.to_string()),
                hostname: host.clone(),
                port: Some(hop_port.to_string()),
                addresses_resolved: all.iter().map(|ip| ip.to_string()).collect(),
                address_used: None,
            };

            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                // As Let's Encrypt does: an https redirect target is fetched
                // without certificate validation; what proves control is the body.
                .danger_accept_invalid_certs(true)
                .resolve_to_addrs(&host, &targets)
                .pool_max_idle_per_host(0)
                .user_agent(USER_AGENT)
                .build()
                .map_err(Problem::internal)?;
            let resp = client.get(url.clone()).send().await;
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    record.address_used = targets.first().map(|a| a.ip().to_string());
                    records.push(record);
                    let first = targets
                        .first()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    return Err(Problem::connection(format!(
                        "{first}: Fetching {url}: {}",
                        describe_reqwest(&e)
                    )));
                }
            };
            record.address_used = resp.remote_addr().map(|a| a.ip().to_string());
            records.push(record);

            let status = resp.status();
            if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
                if redirects >= self.cfg.http_max_redirects {
                    return Err(Problem::connection(format!(
                        "Fetching {url}: Too many redirects (more than {})",
                        self.cfg.http_max_redirects
                    )));
                }
                redirects += 1;
                let loc = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Problem::connection(format!(
                            "Fetching {url}: redirect ({}) without a valid Location header",
                            status.as_u16()
                        ))
                    })?;
                url = self.redirect_target(&url, loc)?;
                continue;
            }
            if status != reqwest::StatusCode::OK {
                return Err(Problem::unauthorized(format!(
                    "Invalid response from {url}: {}",
                    status.as_u16()
                )));
            }

            let limit = self.cfg.http_max_body_bytes;
            let mut body: Vec<u8> = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        body.extend_from_slice(&chunk);
                        if body.len() > limit {
                            return Err(Problem::incorrect_response(format!(
                                "Invalid response from {url}: body is larger than {limit} bytes"
                            )));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Problem::connection(format!(
                            "Fetching {url}: reading the body: {}",
                            describe_reqwest(&e)
                        )))
                    }
                }
            }
            let text = String::from_utf8_lossy(&body);
            let got = text.trim_end();
            if got != key_authorization {
                return Err(Problem::incorrect_response(format!(
                    "The key authorization file from the server did not match this challenge. Expected {:?} (got {:?})",
                    key_authorization,
                    sanitize(got, 128)
                )));
            }
            return Ok(records);
        }
    }

    /// An IP identifier's address passes the address policy the resolver
    /// applies to names' addresses.
    pub(super) fn check_ip_target(&self, ip: IpAddr) -> Result<(), Problem> {
        let ok = super::addr::is_public(ip)
            || (self.cfg.allow_private_addresses && super::addr::is_unicast(ip));
        if ok {
            Ok(())
        } else {
            Err(Problem::connection(format!(
                "{ip} is not a publicly routable unicast address; the CA does not connect to it"
            )))
        }
    }

    /// The ports a redirect may name: 80 and 443, and the validation ports
    /// that stand in for them where a preset moved them (the test preset's
    /// http-01 and tls-alpn-01 ports, as Pebble follows redirects to its
    /// httpPort and tlsPort).
    fn redirect_ports(&self) -> Vec<u16> {
        let mut ports = vec![80, 443, self.cfg.http01_port, self.cfg.tls_alpn01_port];
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Checks a redirect's Location: http or https only, a domain name, and
    /// one of [`Self::redirect_ports`].
    fn redirect_target(&self, from: &Url, location: &str) -> Result<Url, Problem> {
        let target = from.join(location).map_err(|e| {
            Problem::connection(format!(
                "Fetching {from}: invalid redirect Location {:?}: {e}",
                sanitize(location, 128)
            ))
        })?;
        if target.scheme() != "http" && target.scheme() != "https" {
            return Err(Problem::connection(format!(
                "Fetching {from}: invalid protocol scheme in redirect target {:?}: only http and https are allowed",
                sanitize(target.as_str(), 128)
            )));
        }
        let port = target.port_or_known_default().unwrap_or(0);
        let allowed = self.redirect_ports();
        if !allowed.contains(&port) {
            let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
            return Err(Problem::connection(format!(
                "Fetching {from}: invalid port in redirect target {:?}: only ports {} are allowed",
                sanitize(target.as_str(), 128),
                list.join(", ")
            )));
        }
        if !matches!(target.host(), Some(url::Host::Domain(_))) {
            return Err(Problem::connection(format!(
                "Fetching {from}: invalid host in redirect target {:?}: only domain names are supported, not IP addresses",
                sanitize(target.as_str(), 128)
            )));
        }
        Ok(target)
    }
}

/// The first IPv6 then the first IPv4 address, as Let's Encrypt dials: the
/// client tries them in that order.
pub(super) fn dial_order(usable: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let v6 = usable.iter().find(|ip| ip.is_ipv6());
    let v4 = usable.iter().find(|ip| ip.is_ipv4());
    v6.into_iter()
        .chain(v4)
        .map(|ip| SocketAddr::new(*ip, port))
        .collect()
}

/// A short, user-facing description of a reqwest failure, from its
/// innermost cause ("Connection refused", "timed out"...).
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(src) = inner.source() {
        inner = src;
    }
    let what = if e.is_timeout() {
        "Timeout".to_string()
    } else if e.is_connect() {
        format!("Error connecting: {inner}")
    } else {
        inner.to_string()
    };
    sanitize(&what, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_order_prefers_v6_then_v4() {
        let ips: Vec<IpAddr> = vec![
            "1.2.3.4".parse().unwrap(),
            "2606::1".parse().unwrap(),
            "5.6.7.8".parse().unwrap(),
        ];
        let got = dial_order(&ips, 80);
        assert_eq!(
            got,
            vec![
                "[2606::1]:80".parse::<SocketAddr>().unwrap(),
                "1.2.3.4:80".parse().unwrap()
            ]
        );
    }
}
