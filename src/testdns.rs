//! `cairn testdns`: a mock DNS server for tests and clients' dns-01 hooks,
//! with an HTTP API shaped like Let's Encrypt's challenge test server.
//! INTERFACE STUB: implemented by the VA work.

use std::net::{Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, clap::Args)]
pub struct TestDnsArgs {
    /// UDP and TCP address of the DNS server.
    #[arg(long, default_value = "127.0.0.1:8053", env = "CAIRN_TESTDNS_DNS_LISTEN")]
    pub dns_listen: SocketAddr,
    /// HTTP address of the management API.
    #[arg(long, default_value = "127.0.0.1:8055", env = "CAIRN_TESTDNS_API_LISTEN")]
    pub api_listen: SocketAddr,
    /// A answer for names with no A record set.
    #[arg(long, default_value = "127.0.0.1", env = "CAIRN_TESTDNS_DEFAULT_IPV4")]
    pub default_ipv4: Ipv4Addr,
}

pub async fn run(_args: TestDnsArgs) -> anyhow::Result<()> {
    anyhow::bail!("testdns not implemented yet")
}
