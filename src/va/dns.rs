//! The VA's resolver: hickory pointed at the configured server (UDP and
//! TCP) or the system's, with caching off, and the address lookups that
//! http-01 and tls-alpn-01 dial through (with the address policy applied).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::ProtoErrorKind;
use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

use super::addr;
use crate::problem::Problem;

/// Why a lookup produced no records.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupError {
    /// NOERROR with no records of the type.
    NoData,
    /// NXDOMAIN.
    NxDomain,
    /// SERVFAIL, REFUSED, timeout, network error...: the answer is unknown.
    Failed(String),
}

impl LookupError {
    /// A `dns` problem for this error, Boulder-style wording.
    pub fn problem(&self, rtype: RecordType, name: &str) -> Problem {
        match self {
            LookupError::NoData => {
                Problem::dns(format!("DNS problem: no {rtype} records found for {name}"))
            }
            LookupError::NxDomain => Problem::dns(format!(
                "DNS problem: NXDOMAIN looking up {rtype} for {name} - check that a DNS record exists for this domain"
            )),
            LookupError::Failed(why) => Problem::dns(format!(
                "DNS problem: {why} looking up {rtype} for {name} - the domain's nameservers may be malfunctioning"
            )),
        }
    }
}

/// Addresses found for a host, and which of them policy lets us dial.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Everything the lookups returned, IPv6 first.
    pub all: Vec<IpAddr>,
    /// The subset the address policy allows, IPv6 first.
    pub usable: Vec<IpAddr>,
}

pub struct Dns {
    resolver: TokioResolver,
    allow_private: bool,
}

/// Parses `ip:port`, `[v6]:port` or a bare IP (port 53).
fn parse_server(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    anyhow::bail!("va.resolver {s:?} is not ip:port")
}

impl Dns {
    pub fn new(resolver: &str, timeout: Duration, allow_private: bool) -> anyhow::Result<Dns> {
        let config = if resolver.trim().is_empty() {
            let (system, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                anyhow::anyhow!(
                    "va.resolver is empty and the system resolver configuration is unusable: {e}"
                )
            })?;
            // Only the name servers: search domains would let a CA resolve
            // something other than the name it was asked to validate.
            ResolverConfig::from_parts(None, vec![], system.name_servers().to_vec())
        } else {
            let sa = parse_server(resolver.trim())?;
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[sa.ip()], sa.port(), true),
            )
        };
        let mut opts = ResolverOpts::default();
        // Tests (and clients' hooks) change records between validations, and
        // a CA must see the current answer: no caching at all.
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.use_hosts_file = ResolveHosts::Never;
        opts.edns0 = true;
        opts.try_tcp_on_error = true;
        opts.attempts = 2;
        opts.timeout = timeout.clamp(Duration::from_secs(1), Duration::from_secs(5));
        opts.ndots = 0;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        Ok(Dns {
            resolver,
            allow_private,
        })
    }

    /// All records of `rtype` at `name` (CNAMEs followed by the resolver).
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, LookupError> {
        let fq = format!("{}.", name.trim_end_matches('.'));
        let name = Name::from_ascii(&fq)
            .map_err(|_| LookupError::Failed(format!("invalid name {:?}", fq)))?;
        match self.resolver.lookup(name, rtype).await {
            Ok(lookup) => {
                let found: Vec<RData> = lookup
                    .records()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data().clone())
                    .collect();
                if found.is_empty() {
                    Err(LookupError::NoData)
                } else {
                    Ok(found)
                }
            }
            Err(e) => Err(classify(&e)),
        }
    }

    /// AAAA and A for `host`, with the address policy applied. Fails with a
    /// `dns` problem when there is nothing to dial.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, Problem> {
        let (v6, v4) = tokio::join!(
            self.lookup(host, RecordType::AAAA),
            self.lookup(host, RecordType::A)
        );
        let mut all = Vec::new();
        for rd in [&v6, &v4].into_iter().flatten().flatten() {
            match rd {
                RData::AAAA(a) => all.push(IpAddr::V6(a.0)),
                RData::A(a) => all.push(IpAddr::V4(a.0)),
                _ => {}
            }
        }
        if all.is_empty() {
            // Report the most informative failure: a broken server beats NXDOMAIN
            // beats no data.
            let errs = [(RecordType::A, v4.err()), (RecordType::AAAA, v6.err())];
            for (t, e) in &errs {
                if let Some(e @ LookupError::Failed(_)) = e {
                    return Err(e.problem(*t, host));
                }
            }
            for (t, e) in &errs {
                if let Some(e @ LookupError::NxDomain) = e {
                    return Err(e.problem(*t, host));
                }
            }
            return Err(Problem::dns(format!(
                "DNS problem: no valid A or AAAA records found for {host}"
            )));
        }
        let usable: Vec<IpAddr> = all
            .iter()
            .copied()
            .filter(|ip| self.allow_private || addr::is_public(*ip))
            .collect();
        if usable.is_empty() {
            let list: Vec<String> = all.iter().take(8).map(|ip| ip.to_string()).collect();
            return Err(Problem::dns(format!(
                "{host} resolves only to non-public addresses ({}), which this CA does not connect to",
                list.join(", ")
            )));
        }
        Ok(Resolved { all, usable })
    }
}

fn classify(e: &ResolveError) -> LookupError {
    if let Some(p) = e.proto() {
        if let ProtoErrorKind::NoRecordsFound { response_code, .. } = p.kind() {
            return match *response_code {
                ResponseCode::NoError => LookupError::NoData,
                ResponseCode::NXDomain => LookupError::NxDomain,
                ResponseCode::ServFail => LookupError::Failed("SERVFAIL".into()),
                ResponseCode::Refused => LookupError::Failed("REFUSED".into()),
                ResponseCode::FormErr => LookupError::Failed("FORMERR".into()),
                other => LookupError::Failed(format!("response code {}", u16::from(other))),
            };
        }
        if p.is_io() {
            return LookupError::Failed("network error".into());
        }
        if matches!(p.kind(), ProtoErrorKind::Timeout) {
            return LookupError::Failed("query timed out".into());
        }
    }
    LookupError::Failed(super::sanitize(&e.to_string(), 120))
}
