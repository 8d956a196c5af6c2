//! dns-persist-01 (draft-ietf-acme-dns-persist-01, 24 March 2026): a
//! standing TXT record at `_validation-persist.<name>` that names this CA
//! (an Issuer Domain Name) and the account, in RFC 8659's issue-value
//! syntax: `cairn.example; accounturi=https://...; policy=wildcard;
//! persistUntil=1767225600`. Unlike dns-01 it carries no token, so one
//! record serves every later authorization of the same account.
//!
//! Not done (each a MAY): just-in-time validation at authorization creation
//! (§4.4), and letting a parent's policy=wildcard record authorize a
//! subdomain (§6).

use super::{sanitize, Va, ValidationRecord};
use crate::problem::Problem;

/// §4: the label prepended to the name being validated.
const LABEL: &str = "_validation-persist";

/// A record's issue-value, split per RFC 8659 §4.2 but not yet judged.
#[derive(Debug, PartialEq)]
struct IssueValue<'a> {
    /// The issuer-domain-name, normalized for comparison (§3.1: lower case,
    /// no trailing dot); empty if the record names none.
    issuer: String,
    /// What follows the first `;`, if anything.
    parameters: Option<&'a str>,
}

/// The parameters this method defines (§4.1), from a record for this CA.
#[derive(Debug, Default, PartialEq)]
struct Params {
    account_uri: Option<String>,
    wildcard: bool,
    persist_until: Option<i64>,
}

/// Why one record for this CA does not validate.
#[derive(Debug, PartialEq)]
enum Rejection {
    /// A syntax error (§9.3.1: `malformed`).
    Malformed(String),
    /// Well formed, but it does not authorize this request (§9.3.1:
    /// `unauthorized`).
    Unauthorized(String),
}

fn wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// RFC 8659 §4.2 `issue-value = *WSP [issuer-domain-name *WSP] [";" *WSP
/// [parameters *WSP]]`: the issuer and the parameter text.
fn split(value: &str) -> IssueValue<'_> {
    let (issuer, parameters) = match value.split_once(';') {
        Some((i, p)) => (i, Some(p)),
        None => (value, None),
    };
    // §9.2: servers SHOULD case-fold and drop a trailing dot before comparing.
    let issuer = issuer.trim_matches(wsp);
    let issuer = issuer.strip_suffix('.').unwrap_or(issuer);
    IssueValue {
        issuer: issuer.to_ascii_lowercase(),
        parameters,
    }
}

/// RFC 8659 §4.2 `tag = (ALPHA / DIGIT) *( *("-") (ALPHA / DIGIT))`.
fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// RFC 8659 §4.2 `value = *(%x21-3A / %x3C-7E)`.
fn is_value(v: &str) -> bool {
    v.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b';')
}

/// The parameters after the issuer (RFC 8659 §4.2 `parameters`), with this
/// method's meaning (§4.1): `accounturi` required; `policy=wildcard`
/// (value case-insensitive) widens the scope, any other policy value is as
/// if absent; `persistUntil` a base-10 UNIX time; unknown tags ignored.
/// Tags compare case-insensitively; a tag given twice is malformed
/// (§9.3.1).
fn parse_params(text: Option<&str>) -> Result<Params, String> {
    let mut out = Params::default();
    let mut seen: Vec<String> = Vec::new();
    let text = text.map(|t| t.trim_matches(wsp)).unwrap_or("");
    if !text.is_empty() {
        for part in text.split(';') {
            let Some((tag, value)) = part.split_once('=') else {
                return Err(format!(
                    "parameter {:?} is not tag=value",
                    sanitize(part.trim_matches(wsp), 60)
                ));
            };
            let (tag, value) = (tag.trim_matches(wsp), value.trim_matches(wsp));
            if !is_tag(tag) {
                return Err(format!("{:?} is not a parameter tag", sanitize(tag, 60)));
            }
            if !is_value(value) {
                return Err(format!(
                    "the value of {tag} has a space or a character outside printable ASCII"
                ));
            }
            let key = tag.to_ascii_lowercase();
            if seen.contains(&key) {
                return Err(format!("parameter {tag} appears more than once"));
            }
            seen.push(key.clone());
            match key.as_str() {
                "accounturi" => out.account_uri = Some(value.to_string()),
                "policy" => out.wildcard = value.eq_ignore_ascii_case("wildcard"),
                "persistuntil" => {
                    let until = value
                        .bytes()
                        .all(|c| c.is_ascii_digit())
                        .then(|| value.parse::<i64>().ok())
                        .flatten()
                        .ok_or_else(|| {
                            format!(
                                "persistUntil={:?} is not a base-10 UNIX timestamp",
                                sanitize(value, 30)
                            )
                        })?;
                    out.persist_until = Some(until);
                }
                // §4.1 item 1: unrecognized tags are ignored.
                _ => {}
            }
        }
    }
    if out.account_uri.is_none() {
        return Err("it has no accounturi parameter, which is required".into());
    }
    Ok(out)
}

/// Judges one record that names this CA against the request.
fn judge(params: &Params, account_uri: &str, wildcard: bool, now: i64) -> Result<(), String> {
    // §4.1 item 3 (mode 3a): the account URL, by simple string comparison.
    let given = params.account_uri.as_deref().unwrap_or("");
    if given != account_uri {
        return Err(format!(
            "accounturi={} is not this account's URL",
            sanitize(given, 120)
        ));
    }
    // §5: only policy=wildcard makes a record sufficient for *.name.
    if wildcard && !params.wildcard {
        return Err("it lacks policy=wildcard, which a wildcard authorization requires".into());
    }
    // §4.1 item 5: no new validation after persistUntil.
    if let Some(until) = params.persist_until {
        if now > until {
            return Err(format!(
                "persistUntil={until} ({}) has passed; it is now {}",
                rfc3339(until),
                rfc3339(now)
            ));
        }
    }
    Ok(())
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// §4.3.2: keep the records naming one of `issuers`; validation succeeds if
/// any of them satisfies every requirement.
fn evaluate(
    values: &[String],
    issuers: &[String],
    account_uri: &str,
    wildcard: bool,
    now: i64,
) -> Result<(), Vec<(String, Rejection)>> {
    let mut rejections = Vec::new();
    for v in values {
        let iv = split(v);
        if !issuers.contains(&iv.issuer) {
            continue;
        }
        let r = match parse_params(iv.parameters) {
            Err(why) => Rejection::Malformed(why),
            Ok(p) => match judge(&p, account_uri, wildcard, now) {
                Ok(()) => return Ok(()),
                Err(why) => Rejection::Unauthorized(why),
            },
        };
        rejections.push((v.clone(), r));
    }
    Err(rejections)
}

/// `"value", "value" (and N more)`, each sanitized.
fn show(values: &[String]) -> String {
    let shown: Vec<String> = values
        .iter()
        .take(3)
        .map(|v| format!("{:?}", sanitize(v, 160)))
        .collect();
    let more = if values.len() > 3 {
        format!(" (and {} more)", values.len() - 3)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

impl Va {
    pub(super) async fn dns_persist01(
        &self,
        domain: &str,
        wildcard: bool,
        account_uri: &str,
        now: i64,
    ) -> Result<Vec<ValidationRecord>, Problem> {
        let issuers = &self.cfg.dns_persist_issuer_domains;
        if issuers.is_empty() {
            return Err(Problem::unauthorized(
                "dns-persist-01 is no longer offered by this CA (va.dns_persist_issuer_domains is empty)",
            ));
        }
        // §4 and §5: the record sits under the name itself, for *.name too.
        let name = format!("{LABEL}.{domain}");
        // §9.1: a record's character-strings form one value.
        let values = self.txt_values(&name).await?;
        let policy = if wildcard { "; policy=wildcard" } else { "" };
        let example = format!("\"{}; accounturi={account_uri}{policy}\"", issuers[0]);
        if values.is_empty() {
            return Err(Problem::unauthorized(format!(
                "No TXT record found at {name}; publish {example}"
            )));
        }
        match evaluate(&values, issuers, account_uri, wildcard, now) {
            Ok(()) => Ok(vec![ValidationRecord {
                hostname: domain.to_string(),
                ..ValidationRecord::default()
            }]),
            Err(rejections) if rejections.is_empty() => Err(Problem::unauthorized(format!(
                "No TXT record at {name} names this CA's issuer domain ({}); found {}; publish {example}",
                issuers.join(", "),
                show(&values)
            ))),
            Err(rejections) => {
                // An authorization failure says more than a typo elsewhere.
                let unauthorized = rejections
                    .iter()
                    .any(|(_, r)| matches!(r, Rejection::Unauthorized(_)));
                let why: Vec<String> = rejections
                    .iter()
                    .take(3)
                    .map(|(v, r)| {
                        let (Rejection::Malformed(w) | Rejection::Unauthorized(w)) = r;
                        format!("{:?}: {w}", sanitize(v, 160))
                    })
                    .collect();
                let detail = format!(
                    "No valid dns-persist-01 record at {name}: {}; expected {example}",
                    why.join("; ")
                );
                Err(if unauthorized {
                    Problem::unauthorized(detail)
                } else {
                    Problem::malformed(detail)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "https://ca.example/acme/acct/1";

    fn issuers() -> Vec<String> {
        vec!["authority.example".into(), "ca.example.net".into()]
    }

    fn params(p: &str) -> Result<Params, String> {
        parse_params(Some(p))
    }

    #[test]
    fn splits_the_issuer_and_normalizes_it() {
        assert_eq!(
            split("  Authority.Example. ;accounturi=x"),
            IssueValue {
                issuer: "authority.example".into(),
                parameters: Some("accounturi=x"),
            }
        );
        assert_eq!(split("authority.example").parameters, None);
        assert_eq!(split("; accounturi=x").issuer, "");
    }

    #[test]
    fn parses_the_drafts_examples() {
        // §4.1 Figure 2 and §10.4, as one value (character-strings joined).
        assert_eq!(
            params(" accounturi=https://ca.example/acct/123"),
            Ok(Params {
                account_uri: Some("https://ca.example/acct/123".into()),
                ..Params::default()
            })
        );
        assert_eq!(
            params(
                " accounturi=https://ca.example/acct/123; policy=wildcard; persistUntil=1721952000"
            ),
            Ok(Params {
                account_uri: Some("https://ca.example/acct/123".into()),
                wildcard: true,
                persist_until: Some(1721952000),
            })
        );
    }

    #[test]
    fn policy_and_tags_are_case_insensitive_and_unknown_values_mean_exact() {
        assert!(params("accounturi=a; policy=WildCard").unwrap().wildcard);
        assert!(params("ACCOUNTURI=a; Policy=wildcard").unwrap().wildcard);
        assert!(!params("accounturi=a; policy=exact").unwrap().wildcard);
        assert!(!params("accounturi=a; policy=").unwrap().wildcard);
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        let p = params("future=1; accounturi=a; x-y-z=%41").unwrap();
        assert_eq!(p.account_uri.as_deref(), Some("a"));
    }

    #[test]
    fn syntax_errors_are_reported() {
        for (bad, needle) in [
            ("", "no accounturi"),
            ("policy=wildcard", "no accounturi"),
            ("accounturi", "not tag=value"),
            ("accounturi=a;", "not tag=value"),
            ("accounturi=a;; policy=wildcard", "not tag=value"),
            ("-x=1; accounturi=a", "not a parameter tag"),
            ("a_b=1; accounturi=a", "not a parameter tag"),
            ("accounturi=a b", "space"),
            ("accounturi=a\u{e9}", "printable ASCII"),
            ("accounturi=a; AccountURI=a", "more than once"),
            ("accounturi=a; persistUntil=soon", "persistUntil"),
            ("accounturi=a; persistUntil=-5", "persistUntil"),
            ("accounturi=a; persistUntil=+5", "persistUntil"),
            (
                "accounturi=a; persistUntil=99999999999999999999",
                "persistUntil",
            ),
        ] {
            let e = params(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        assert_eq!(
            parse_params(None).unwrap_err(),
            "it has no accounturi parameter, which is required"
        );
    }

    #[test]
    fn judges_account_scope_and_time() {
        let p = |s: &str| params(s).unwrap();
        assert!(judge(&p(&format!("accounturi={ACCT}")), ACCT, false, 0).is_ok());
        // Simple string comparison: no normalization of the URI.
        let e = judge(&p(&format!("accounturi={ACCT}/")), ACCT, false, 0).unwrap_err();
        assert!(e.contains("not this account's URL"), "{e}");
        let e = judge(
            &p("accounturi=HTTPS://ca.example/acme/acct/1"),
            ACCT,
            false,
            0,
        );
        assert!(e.is_err());
        let e = judge(&p(&format!("accounturi={ACCT}")), ACCT, true, 0).unwrap_err();
        assert!(e.contains("policy=wildcard"), "{e}");
        assert!(judge(
            &p(&format!("accounturi={ACCT}; policy=wildcard")),
            ACCT,
            true,
            0
        )
        .is_ok());
        let until = p(&format!("accounturi={ACCT}; persistUntil=1721952000"));
        assert!(judge(&until, ACCT, false, 1721952000).is_ok());
        let e = judge(&until, ACCT, false, 1721952001).unwrap_err();
        assert!(e.contains("2024-07-26T00:00:00Z"), "{e}");
    }

    #[test]
    fn any_good_record_for_this_ca_wins_and_others_are_ignored() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let good = format!("ca.example.net; accounturi={ACCT}");
        // §4.3.4: another CA's record is ignored, not an error.
        let r = evaluate(
            &v(&[
                "ca1.example; accounturi=https://ca1.example/acct/1",
                "authority.example; nonsense",
                &good,
            ]),
            &issuers(),
            ACCT,
            false,
            0,
        );
        assert_eq!(r, Ok(()));
        let r = evaluate(
            &v(&["ca1.example; accounturi=x"]),
            &issuers(),
            ACCT,
            false,
            0,
        );
        assert_eq!(r, Err(vec![]));
        let r = evaluate(
            &v(&[
                "authority.example; nonsense",
                "authority.example; accounturi=other",
            ]),
            &issuers(),
            ACCT,
            false,
            0,
        )
        .unwrap_err();
        assert!(matches!(r[0].1, Rejection::Malformed(_)), "{r:?}");
        assert!(matches!(r[1].1, Rejection::Unauthorized(_)), "{r:?}");
    }
}
