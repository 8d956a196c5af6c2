//! Identifier policy: which identifiers may be ordered under which profile.
//! DNS names: syntax (RFC 1035 LDH labels, wildcards only as the whole
//! leftmost label, `xn--` labels only as valid IDNA2008 A-labels: `idn.rs`),
//! the Public Suffix List (a bare ICANN public suffix is never issued for),
//! and configured blocked names. IP addresses (RFC 8738): canonical text,
//! and the VA's address policy applied to the identifier itself.

mod idn;

use crate::config::{PolicyConfig, ProfileConfig};
use crate::core::{Identifier, IdentifierType};
use crate::problem::{Problem, Subproblem};
use anyhow::Context;
use publicsuffix::{List, Psl};
use std::net::{IpAddr, Ipv6Addr};

/// The snapshot shipped with Cairn, used when no list file is configured.
const PSL_SNAPSHOT: &[u8] = include_bytes!("../../test-fixtures/public_suffix_list.dat");

pub struct Policy {
    psl: List,
    blocked: Vec<String>,
}

/// An identifier that passed policy: a DNS name lower-case with any
/// wildcard split off, or an IP address in canonical text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name {
    pub kind: IdentifierType,
    /// The name without any `*.` prefix, or the address.
    pub base: String,
    pub wildcard: bool,
}

impl Name {
    pub fn identifier(&self) -> Identifier {
        Identifier::of(self.kind, self.value())
    }

    /// The identifier value as ordered, `*.base` for wildcards.
    pub fn value(&self) -> String {
        if self.wildcard {
            format!("*.{}", self.base)
        } else {
            self.base.clone()
        }
    }
}

impl Policy {
    pub fn new(cfg: &PolicyConfig) -> anyhow::Result<Policy> {
        let bytes = if cfg.public_suffix_list.is_empty() {
            PSL_SNAPSHOT.to_vec()
        } else {
            std::fs::read(&cfg.public_suffix_list)
                .with_context(|| format!("policy.public_suffix_list: {}", cfg.public_suffix_list))?
        };
        let psl = List::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("policy.public_suffix_list: {e}"))?;
        let blocked = cfg
            .blocked_names
            .iter()
            .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        Ok(Policy { psl, blocked })
    }

    /// Check a new order's identifiers against the policy and the order's
    /// profile (`profile_name`, and `ip_profiles`: the profiles that take IP
    /// addresses, for the refusal's detail). `private_ips` lets IP
    /// identifiers be private, loopback or link-local addresses. Returns
    /// them normalised (lower-case, de-duplicated, sorted), or a problem
    /// with one subproblem per bad one.
    pub fn check_order(
        &self,
        ids: &[Identifier],
        (profile_name, profile): (&str, &ProfileConfig),
        private_ips: bool,
    ) -> Result<Vec<Name>, Problem> {
        let max_names = profile.max_names;
        if ids.is_empty() {
            return Err(Problem::malformed(
                "NewOrder request did not specify any identifiers",
            ));
        }
        let mut names = Vec::with_capacity(ids.len());
        let mut subs: Vec<Subproblem> = Vec::new();
        let mut unsupported = false;
        for id in ids {
            let kind = match id.kind.as_str() {
                "dns" => IdentifierType::Dns,
                "ip" => IdentifierType::Ip,
                other => {
                    unsupported = true;
                    subs.push(
                        Problem::unsupported_identifier(format!(
                            "identifier type {other:?} is not supported (\"dns\" or \"ip\")"
                        ))
                        .sub(id.clone()),
                    );
                    continue;
                }
            };
            if !profile.identifier_types.contains(&kind) {
                subs.push(
                    Problem::rejected_identifier(format!(
                        "profile {profile_name:?} does not allow {} identifiers",
                        kind.as_str()
                    ))
                    .sub(id.clone()),
                );
                continue;
            }
            let checked = match kind {
                IdentifierType::Dns => self.check_name(&id.value),
                IdentifierType::Ip => check_ip(&id.value, private_ips),
            };
            match checked {
                Ok(n) => names.push(n),
                Err(p) => subs.push(p.sub(id.clone())),
            }
        }
        if !subs.is_empty() {
            let top = if subs.len() == 1 {
                Problem::from_sub(&subs[0])
            } else if unsupported {
                Problem::unsupported_identifier(format!(
                    "{} identifiers cannot be issued for; see subproblems",
                    subs.len()
                ))
            } else {
                Problem::rejected_identifier(format!(
                    "{} identifiers cannot be issued for; see subproblems",
                    subs.len()
                ))
            };
            return Err(top.with_subproblems(subs));
        }
        names.sort();
        names.dedup();
        if names.len() > max_names {
            return Err(Problem::rejected_identifier(format!(
                "order has {} identifiers; at most {max_names} are allowed",
                names.len()
            )));
        }
        Ok(names)
    }

    /// Check one dns identifier value.
    pub fn check_name(&self, value: &str) -> Result<Name, Problem> {
        let lower = value.to_ascii_lowercase();
        let (wildcard, base) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        well_formed(base).map_err(|why| {
            Problem::rejected_identifier(format!("invalid domain name {value:?}: {why}"))
        })?;
        for label in base.split('.').filter(|l| l.starts_with("xn--")) {
            idn::check_a_label(label).map_err(|why| {
                Problem::rejected_identifier(format!("invalid domain name {value:?}: {why}"))
            })?;
        }
        if let Some(suffix) = self.psl.suffix(base.as_bytes()) {
            if suffix.is_known()
                && suffix.typ() == Some(publicsuffix::Type::Icann)
                && suffix.as_bytes() == base.as_bytes()
            {
                let what = if wildcard {
                    "a wildcard of a public suffix"
                } else {
                    "a public suffix"
                };
                return Err(Problem::rejected_identifier(format!(
                    "{value:?} is {what}; issue for a name under it"
                )));
            }
        }
        if let Some(b) = self
            .blocked
            .iter()
            .find(|b| base == b.as_str() || base.ends_with(&format!(".{b}")))
        {
            return Err(Problem::rejected_identifier(format!(
                "{value:?} is blocked by this CA's policy ({b})"
            )));
        }
        Ok(Name {
            kind: IdentifierType::Dns,
            base: base.to_string(),
            wildcard,
        })
    }

    /// The key of the per-registered-domain limits for an identifier: the
    /// registered domain of a name; for an IP address, as Let's Encrypt's
    /// limits, the IPv4 address itself or the IPv6 address's /64.
    pub fn domain_key(&self, name: &Name) -> String {
        if name.kind == IdentifierType::Ip {
            return match name.base.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => {
                    let net = u128::from(v6) & (u128::MAX << 64);
                    format!("{}/64", Ipv6Addr::from(net))
                }
                _ => name.base.clone(),
            };
        }
        self.registered_domain(&name.base)
    }

    /// The registered domain (eTLD+1) of a name; a name under a suffix that
    /// is not in the list is its own registered domain at the label left of it.
    pub fn registered_domain(&self, name: &str) -> String {
        match self.psl.domain(name.as_bytes()) {
            Some(d) => String::from_utf8_lossy(d.as_bytes()).into_owned(),
            None => name.to_string(),
        }
    }
}

/// Check one ip identifier value (RFC 8738 §3): an IPv4 address in
/// dotted-decimal or an IPv6 address in RFC 5952 text, exactly as it would
/// be printed (so one address has one identifier), and one the VA could be
/// asked to dial.
fn check_ip(value: &str, private_ips: bool) -> Result<Name, Problem> {
    let ip: IpAddr = value.parse().map_err(|_| {
        Problem::malformed(format!(
            "{value:?} is not an IPv4 or IPv6 address (RFC 8738 ip identifier)"
        ))
    })?;
    let canonical = ip.to_string();
    if canonical != value {
        return Err(Problem::malformed(format!(
            "IP address {value:?} is not in canonical form; write it as {canonical:?}"
        )));
    }
    let dialable =
        crate::va::addr::is_public(ip) || (private_ips && crate::va::addr::is_unicast(ip));
    if !dialable {
        return Err(Problem::rejected_identifier(format!(
            "{value} is not a publicly routable unicast address; this CA does not issue for it"
        )));
    }
    Ok(Name {
        kind: IdentifierType::Ip,
        base: canonical,
        wildcard: false,
    })
}

/// RFC 1035/1123 syntax for a DNS name as Let's Encrypt accepts it: ASCII
/// letters, digits and hyphens, labels of 1–63 octets not starting or ending
/// with a hyphen, at least two labels, at most 253 octets, no trailing dot,
/// and not an IP address.
fn well_formed(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    if name.ends_with('.') {
        return Err("ends with a dot");
    }
    if name.contains('*') {
        return Err("a wildcard is only allowed as the whole leftmost label");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err("must have at least two labels");
    }
    for label in &labels {
        if label.is_empty() {
            return Err("contains an empty label");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("contains characters other than letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label starting or ending with a hyphen");
        }
        if label.len() >= 4 && &label[2..4] == "--" && !label.starts_with("xn--") {
            return Err("has a label with hyphens in the third and fourth positions");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("looks like an IP address (its last label is numeric)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(types: &[IdentifierType], max_names: usize) -> ProfileConfig {
        ProfileConfig {
            description: String::new(),
            validity_secs: 86_400,
            identifier_types: types.to_vec(),
            max_names,
            pending_authz_lifetime_secs: 60,
            order_lifetime_secs: 60,
            valid_authz_lifetime_secs: 60,
            common_name: true,
            subject_key_id: true,
            client_auth: false,
            key_encipherment: true,
            ari_window_divisor: 3,
            ari_window_length_divisor: 50,
        }
    }

    fn check(p: &Policy, ids: &[Identifier], max_names: usize) -> Result<Vec<Name>, Problem> {
        let pr = profile(&[IdentifierType::Dns], max_names);
        p.check_order(ids, ("classic", &pr), false)
    }

    #[test]
    fn ip_identifiers_follow_rfc_8738_and_the_profile() {
        let p = policy();
        let ip = |v: &str| Identifier::of(IdentifierType::Ip, v);
        let both = profile(&[IdentifierType::Dns, IdentifierType::Ip], 100);
        let got = p
            .check_order(
                &[ip("2001:4860::1"), ip("8.8.8.8")],
                ("shortlived", &both),
                false,
            )
            .unwrap();
        assert_eq!(got[0].base, "2001:4860::1");
        assert_eq!(got[1].base, "8.8.8.8");
        assert!(got
            .iter()
            .all(|n| n.kind == IdentifierType::Ip && !n.wildcard));
        // Not canonical, not an address, private without the preset's leave.
        for bad in [
            "2001:4860:0::1",
            "008.8.8.8",
            "8.8.8",
            "example.com",
            "127.0.0.1",
            "10.0.0.1",
            "fe80::1",
        ] {
            let e = p
                .check_order(&[ip(bad)], ("shortlived", &both), false)
                .unwrap_err();
            assert_eq!(e.subproblems.len(), 1, "{bad}: {e:?}");
            assert_eq!(e.subproblems[0].identifier.value, bad);
        }
        assert!(p
            .check_order(&[ip("127.0.0.1")], ("s", &both), true)
            .is_ok());
        for never in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1"] {
            assert!(
                p.check_order(&[ip(never)], ("s", &both), true).is_err(),
                "{never}"
            );
        }
        // A profile without "ip" refuses it as rejectedIdentifier.
        let e = check(&p, &[ip("8.8.8.8")], 100).unwrap_err();
        assert_eq!(e.kind, crate::problem::Kind::RejectedIdentifier);
        assert!(
            e.detail.contains("\"classic\" does not allow ip"),
            "{}",
            e.detail
        );
        // Limit keys: the IPv4 address, the IPv6 /64.
        assert_eq!(p.domain_key(&got[1]), "8.8.8.8");
        assert_eq!(p.domain_key(&got[0]), "2001:4860::/64");
    }

    fn policy() -> Policy {
        Policy::new(&PolicyConfig {
            blocked_names: vec!["blocked.example".into()],
            public_suffix_list: String::new(),
        })
        .unwrap()
    }

    #[test]
    fn accepts_ordinary_and_wildcard_names() {
        let p = policy();
        assert_eq!(
            p.check_name("WWW.Example.com").unwrap().base,
            "www.example.com"
        );
        let w = p.check_name("*.example.co.uk").unwrap();
        assert!(w.wildcard);
        assert_eq!(w.base, "example.co.uk");
        assert!(p.check_name("xn--bcher-kva.example").is_ok());
        assert!(p.check_name("a.test").is_ok());
    }

    #[test]
    fn rejects_malformed_and_forbidden_names() {
        let p = policy();
        for bad in [
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "com.",
            "*.*.x.com",
            "x.*.y.com",
            "*x.com",
            "co.uk",
            "*.co.uk",
            "com",
            "localhost",
            "1.2.3.4",
            "ab--cd.com",
            "blocked.example",
            "a.blocked.example",
            "",
        ] {
            assert!(p.check_name(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(p.check_name(&long_label).is_err());
    }

    #[test]
    fn order_subproblems_name_each_identifier() {
        let p = policy();
        let ids = vec![
            Identifier::dns("ok.example.com"),
            Identifier::dns("a..b"),
            Identifier {
                kind: "email".into(),
                value: "x@y".into(),
            },
        ];
        let e = check(&p, &ids, 100).unwrap_err();
        assert_eq!(e.subproblems.len(), 2);
        assert_eq!(e.subproblems[0].identifier.value, "a..b");
        assert_eq!(
            e.subproblems[1].kind,
            crate::problem::Kind::UnsupportedIdentifier
        );
    }

    #[test]
    fn order_dedupes_and_limits() {
        let p = policy();
        let ids = vec![
            Identifier::dns("A.example.com"),
            Identifier::dns("a.example.com"),
        ];
        assert_eq!(check(&p, &ids, 100).unwrap().len(), 1);
        let many: Vec<_> = (0..101)
            .map(|i| Identifier::dns(format!("n{i}.example.com")))
            .collect();
        assert!(check(&p, &many, 100).is_err());
        assert!(check(&p, &many[..100], 100).is_ok());
    }

    #[test]
    fn registered_domains_follow_the_list() {
        let p = policy();
        assert_eq!(p.registered_domain("a.example.co.uk"), "example.co.uk");
        assert_eq!(p.registered_domain("b.c.example.co.uk"), "example.co.uk");
        assert_eq!(p.registered_domain("x.y.example.test"), "example.test");
    }
}
