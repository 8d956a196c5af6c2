//! CAA (RFC 8659) with the RFC 8657 parameters `accounturi` and
//! `validationmethods`. The lookup climbs from the name to its parents and
//! uses the first non-empty RRset; [`decide`] is the pure decision on it.

use hickory_proto::rr::{RData, RecordType};

use super::dns::LookupError;
use super::{sanitize, ChallengeType, Va};
use crate::problem::Problem;

/// One CAA property as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct CaaProperty {
    pub critical: bool,
    /// Lower-case tag (tags match case-insensitively, RFC 8659 §4.1).
    pub tag: String,
    pub value: String,
}

/// What the issuance asks for.
pub struct CaaRequest<'a> {
    pub wildcard: bool,
    pub method: ChallengeType,
    pub account_uri: &'a str,
    /// Our issuer domain names, lower case.
    pub identities: &'a [String],
}

/// Issuer domain name (lower case) and `(key, value)` parameters.
type IssueValue = (Option<String>, Vec<(String, String)>);

/// An `issue`/`issuewild` value: issuer domain name (None for ";") and
/// parameters, or None if the value does not follow RFC 8659 §4.2 syntax.
fn parse_issue_value(value: &str) -> Option<IssueValue> {
    let mut parts = value.split(';');
    let domain = parts.next().unwrap_or("").trim();
    let domain = if domain.is_empty() {
        None
    } else {
        let ok = domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ok {
            return None;
        }
        Some(domain.to_ascii_lowercase())
    };
    let mut params = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p.split_once('=')?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        if !v.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b';') {
            return None;
        }
        params.push((k.to_ascii_lowercase(), v.to_string()));
    }
    Some((domain, params))
}

/// Does this one property authorize us for the request?
fn authorizes(p: &CaaProperty, req: &CaaRequest) -> bool {
    let Some((Some(domain), params)) = parse_issue_value(&p.value) else {
        return false;
    };
    if !req
        .identities
        .iter()
        .any(|id| id.eq_ignore_ascii_case(&domain))
    {
        return false;
    }
    for (k, v) in &params {
        match k.as_str() {
            "accounturi" if v != req.account_uri => return false,
            "validationmethods" if !v.split(',').any(|m| m.trim() == req.method.as_str()) => {
                return false
            }
            _ => {}
        }
    }
    true
}

/// RFC 8659 §4 decision on the relevant RRset. `Err` says why not.
pub fn decide(rrset: &[CaaProperty], req: &CaaRequest) -> Result<(), String> {
    if let Some(p) = rrset
        .iter()
        .find(|p| p.critical && !matches!(p.tag.as_str(), "issue" | "issuewild" | "iodef"))
    {
        return Err(format!(
            "it has a critical property with an unknown tag {:?}",
            sanitize(&p.tag, 16)
        ));
    }
    let issuewild: Vec<&CaaProperty> = rrset.iter().filter(|p| p.tag == "issuewild").collect();
    let issue: Vec<&CaaProperty> = rrset.iter().filter(|p| p.tag == "issue").collect();
    let (relevant, tag) = if req.wildcard && !issuewild.is_empty() {
        (issuewild, "issuewild")
    } else {
        (issue, "issue")
    };
    // Only iodef or unknown non-critical tags: no restriction.
    if relevant.is_empty() {
        return Ok(());
    }
    if relevant.iter().any(|p| authorizes(p, req)) {
        return Ok(());
    }
    let shown: Vec<String> = relevant
        .iter()
        .take(4)
        .map(|p| format!("{tag} {:?}", sanitize(&p.value, 100)))
        .collect();
    Err(format!(
        "no {tag} property authorizes this CA for {} validation by account {} (found: {})",
        req.method.as_str(),
        req.account_uri,
        shown.join(", ")
    ))
}

impl Va {
    /// Finds the relevant CAA RRset for `domain` and decides on it.
    pub(super) async fn check_caa(
        &self,
        domain: &str,
        wildcard: bool,
        method: ChallengeType,
        account_uri: &str,
    ) -> Result<(), Problem> {
        let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
        for i in 0..labels.len() {
            let name = labels[i..].join(".");
            let rrset = match self.dns.lookup(&name, RecordType::CAA).await {
                Ok(rds) => rds,
                Err(LookupError::NoData | LookupError::NxDomain) => continue,
                // Fail closed: an unknown answer could have forbidden us.
                Err(e @ LookupError::Failed(_)) => return Err(e.problem(RecordType::CAA, &name)),
            };
            let props: Vec<CaaProperty> = rrset
                .iter()
                .filter_map(|rd| match rd {
                    RData::CAA(c) => Some(CaaProperty {
                        critical: c.issuer_critical(),
                        tag: c.tag().as_str().to_ascii_lowercase(),
                        value: String::from_utf8_lossy(c.raw_value()).into_owned(),
                    }),
                    _ => None,
                })
                .collect();
            if props.is_empty() {
                continue;
            }
            let req = CaaRequest {
                wildcard,
                method,
                account_uri,
                identities: &self.caa_identities,
            };
            return decide(&props, &req).map_err(|why| {
                let shown = if wildcard {
                    format!("*.{domain}")
                } else {
                    domain.to_string()
                };
                Problem::caa(format!(
                    "CAA record for {name} prevents issuance for {shown}: {why}"
                ))
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tag: &str, value: &str) -> CaaProperty {
        CaaProperty {
            critical: false,
            tag: tag.into(),
            value: value.into(),
        }
    }

    fn ids() -> Vec<String> {
        vec!["cairn.test".into(), "other-name.test".into()]
    }

    fn req<'a>(ids: &'a [String], wildcard: bool, method: ChallengeType) -> CaaRequest<'a> {
        CaaRequest {
            wildcard,
            method,
            account_uri: "https://ca/acme/acct/1",
            identities: ids,
        }
    }

    #[test]
    fn issue_matching_and_not() {
        let ids = ids();
        let r = req(&ids, false, ChallengeType::Http01);
        assert!(decide(&[], &r).is_ok());
        assert!(decide(&[p("iodef", "mailto:x@y")], &r).is_ok());
        assert!(decide(&[p("issue", "cairn.test")], &r).is_ok());
        assert!(decide(&[p("issue", " Cairn.Test ; ")], &r).is_ok());
        assert!(decide(
            &[p("issue", "letsencrypt.org"), p("issue", "other-name.test")],
            &r
        )
        .is_ok());
        assert!(decide(&[p("issue", "letsencrypt.org")], &r).is_err());
        assert!(decide(&[p("issue", ";")], &r).is_err());
        assert!(decide(&[p("issue", "cairn.test;;bad param")], &r).is_err());
    }

    #[test]
    fn issuewild_rules() {
        let ids = ids();
        let wild = req(&ids, true, ChallengeType::Dns01);
        let plain = req(&ids, false, ChallengeType::Dns01);
        // issuewild present governs wildcards; issue still governs the rest.
        let set = [p("issue", "cairn.test"), p("issuewild", ";")];
        assert!(decide(&set, &plain).is_ok());
        assert!(decide(&set, &wild).is_err());
        let set = [p("issue", ";"), p("issuewild", "cairn.test")];
        assert!(decide(&set, &plain).is_err());
        assert!(decide(&set, &wild).is_ok());
        // No issuewild: issue applies to wildcards too.
        assert!(decide(&[p("issue", "cairn.test")], &wild).is_ok());
        assert!(decide(&[p("issue", "ca.example")], &wild).is_err());
    }

    #[test]
    fn critical_unknown_refuses() {
        let ids = ids();
        let r = req(&ids, false, ChallengeType::Http01);
        let mut c = p("tbs", "x");
        assert!(decide(&[p("issue", "cairn.test"), c.clone()], &r).is_ok());
        c.critical = true;
        let err = decide(&[p("issue", "cairn.test"), c], &r).unwrap_err();
        assert!(err.contains("critical"));
        let mut known = p("issue", "cairn.test");
        known.critical = true;
        assert!(decide(&[known], &r).is_ok());
    }

    #[test]
    fn rfc8657_parameters() {
        let ids = ids();
        let http = req(&ids, false, ChallengeType::Http01);
        let dns = req(&ids, false, ChallengeType::Dns01);
        let v = [p(
            "issue",
            "cairn.test; validationmethods=dns-01,tls-alpn-01",
        )];
        assert!(decide(&v, &dns).is_ok());
        assert!(decide(&v, &http).is_err());
        let a = [p("issue", "cairn.test; accounturi=https://ca/acme/acct/1")];
        assert!(decide(&a, &http).is_ok());
        let a = [p("issue", "cairn.test; accounturi=https://ca/acme/acct/2")];
        assert!(decide(&a, &http).is_err());
        let both = [p(
            "issue",
            "cairn.test; accounturi=https://ca/acme/acct/1; validationmethods=http-01",
        )];
        assert!(decide(&both, &http).is_ok());
        assert!(decide(&both, &dns).is_err());
        // Unknown parameters are ignored.
        assert!(decide(&[p("issue", "cairn.test; foo=bar")], &http).is_ok());
    }
}
