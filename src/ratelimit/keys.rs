//! Bucket keys. A stored key is `<limitName>:<id>`; the id is built here so
//! that every caller counts the same thing the same way.

use super::LimitName;
use std::net::{IpAddr, Ipv6Addr};

/// The stored key of a bucket: `<limitName>:<id>`.
pub fn bucket_key(limit: LimitName, id: &str) -> String {
    format!("{}:{id}", limit.as_str())
}

/// An IPv4-mapped IPv6 address is the IPv4 client it stands for.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The id of *new registrations per IP*: the IPv4 address, or the full IPv6
/// address, in canonical text form.
pub fn registration_ip_key(ip: IpAddr) -> String {
    canonical(ip).to_string()
}

/// The id of *new registrations per IPv6 range*: the client's /48, e.g.
/// `2001:db8:1::/48`; `None` for an IPv4 client (the limit does not apply).
pub fn registration_range_key(ip: IpAddr) -> Option<String> {
    match canonical(ip) {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => Some(format!("{}/48", ipv6_prefix(v6, 48))),
    }
}

/// The first address of the `/bits` network containing `ip`.
pub fn ipv6_prefix(ip: Ipv6Addr, bits: u8) -> Ipv6Addr {
    let bits = u32::from(bits.min(128));
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// Identifiers as one set: lower-cased, de-duplicated, sorted.
pub fn normalize_identifiers<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .map(|n| n.as_ref().to_ascii_lowercase())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The id of *certificates per exact set of identifiers*: the hash the
/// store keeps for every certificate (Boulder's `core.HashIdentifiers`), so
/// order and case do not matter and renewals are found by the same value.
pub use crate::core::identifier_set_hash as fqdn_set_hash;

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn registration_keys_by_family() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(registration_ip_key(v4), "192.0.2.7");
        assert_eq!(registration_range_key(v4), None);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(registration_ip_key(mapped), "192.0.2.7");
        assert_eq!(registration_range_key(mapped), None);

        let a: IpAddr = "2001:db8:1:2:3::9".parse().unwrap();
        let b: IpAddr = "2001:db8:1:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:2::1".parse().unwrap();
        assert_eq!(registration_ip_key(a), "2001:db8:1:2:3::9");
        assert_eq!(registration_range_key(a).unwrap(), "2001:db8:1::/48");
        assert_eq!(registration_range_key(a), registration_range_key(b));
        assert_ne!(registration_range_key(a), registration_range_key(c));
    }

    #[test]
    fn ipv6_prefixes() {
        let ip: Ipv6Addr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse().unwrap();
        assert_eq!(ipv6_prefix(ip, 64).to_string(), "2001:db8:aaaa:bbbb::");
        assert_eq!(ipv6_prefix(ip, 48).to_string(), "2001:db8:aaaa::");
        assert_eq!(ipv6_prefix(ip, 128), ip);
        assert_eq!(ipv6_prefix(ip, 0), Ipv6Addr::UNSPECIFIED);
    }

    #[test]
    fn exact_set_ignores_order_case_and_duplicates() {
        let h = fqdn_set_hash(&["b.example.com", "A.example.com"]);
        assert_eq!(
            h,
            fqdn_set_hash(&["a.example.com", "B.EXAMPLE.COM", "a.example.com"])
        );
        assert_ne!(h, fqdn_set_hash(&["a.example.com"]));
        // Boulder's value: sha256("a.example.com,b.example.com").
        assert_eq!(
            h,
            hex::encode(sha2::Sha256::digest("a.example.com,b.example.com"))
        );
        assert_eq!(h.len(), 64);
        assert_eq!(
            normalize_identifiers(&["B", "a", "b"]),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn stored_keys_carry_the_limit_name() {
        assert_eq!(
            bucket_key(LimitName::NewOrdersPerAccount, "12"),
            "newOrdersPerAccount:12"
        );
    }
}
