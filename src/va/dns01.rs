//! dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<domain>`
//! holding base64url(SHA-256(key authorization)).

use hickory_proto::rr::{RData, RecordType};

use super::dns::LookupError;
use super::{dns01_digest, sanitize, Va, ValidationRecord};
use crate::problem::Problem;

impl Va {
    /// The TXT records at `name`, each as one value (a record's
    /// character-strings joined); none for NXDOMAIN or no data, a `dns`
    /// problem for a failed lookup.
    pub(super) async fn txt_values(&self, name: &str) -> Result<Vec<String>, Problem> {
        match self.dns.lookup(name, RecordType::TXT).await {
            Ok(rds) => Ok(rds
                .iter()
                .filter_map(|rd| match rd {
                    RData::TXT(t) => Some(
                        t.txt_data()
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(LookupError::NoData | LookupError::NxDomain) => Ok(Vec::new()),
            Err(e) => Err(e.problem(RecordType::TXT, name)),
        }
    }

    pub(super) async fn dns01(
        &self,
        domain: &str,
        key_authorization: &str,
    ) -> Result<Vec<ValidationRecord>, Problem> {
        let name = format!("_acme-challenge.{domain}");
        let values = self.txt_values(&name).await?;
        if values.is_empty() {
            return Err(Problem::unauthorized(format!(
                "No TXT record found at {name}"
            )));
        }
        let expected = dns01_digest(key_authorization);
        if values.iter().any(|v| v.trim() == expected) {
            return Ok(vec![ValidationRecord {
                hostname: domain.to_string(),
                ..ValidationRecord::default()
            }]);
        }
        let shown: Vec<String> = values
            .iter()
            .take(3)
            .map(|v| format!("{:?}", sanitize(v, 100)))
            .collect();
        let more = if values.len() > 3 {
            format!(" (and {} more)", values.len() - 3)
        } else {
            String::new()
        };
        Err(Problem::unauthorized(format!(
            "Incorrect TXT record {}{more} found at {name}",
            shown.join(", ")
        )))
    }
}
