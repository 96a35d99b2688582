//! `--resolve *.DOMAIN=IP:PORT`: every host under `DOMAIN` connects to `IP:PORT` (one simulator
//! serving one instance per customer, or a fixed egress address for all of them); any other
//! host is asked of DNS as without the override (hickory, as reqwest's own resolver does).
//! Exact `HOST=IP:PORT` overrides are reqwest's and win over a wildcard.

use std::{net::SocketAddr, sync::Arc};

use hickory_resolver::{TokioResolver, config::LookupIpStrategy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::OnceCell;

/// `true` when `host` is a wildcard pattern, `*.DOMAIN`.
pub fn is_wildcard(host: &str) -> bool {
    host.starts_with("*.")
}

/// The address of the first wildcard pattern among `overrides` that `host` falls under: one or
/// more labels, then `.DOMAIN` (the domain itself does not match), case-insensitive.
pub fn matching(overrides: &[(String, SocketAddr)], host: &str) -> Option<SocketAddr> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    overrides.iter().find_map(|(pattern, address)| {
        let suffix = pattern.strip_prefix('*')?.to_ascii_lowercase();
        let label = host.strip_suffix(&suffix)?;
        (!label.is_empty()).then_some(*address)
    })
}

/// A reqwest resolver for the wildcard overrides, asking DNS for the other hosts.
pub struct Resolver {
    overrides: Vec<(String, SocketAddr)>,
    dns: Arc<OnceCell<TokioResolver>>,
}

impl Resolver {
    /// A resolver for `overrides` (the `*.DOMAIN` ones).
    pub fn new(overrides: Vec<(String, SocketAddr)>) -> Resolver {
        Resolver {
            overrides,
            dns: Arc::default(),
        }
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        if let Some(address) = matching(&self.overrides, name.as_str()) {
            return Box::pin(async move { Ok(Box::new(std::iter::once(address)) as Addrs) });
        }
        let dns = self.dns.clone();
        Box::pin(async move {
            // Built on first use, inside the runtime, from /etc/resolv.conf (as reqwest's).
            let dns = dns
                .get_or_try_init(|| async {
                    let mut builder = TokioResolver::builder_tokio()?;
                    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                    Ok::<_, hickory_resolver::ResolveError>(builder.build())
                })
                .await?;
            let found = dns.lookup_ip(name.as_str()).await?;
            let addresses: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_the_hosts_under_its_domain_only() {
        let simulator: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let overrides = vec![("*.Service-Now.com".to_owned(), simulator)];
        assert_eq!(matching(&overrides, "c00001.service-now.com"), Some(simulator));
        assert_eq!(matching(&overrides, "a.b.SERVICE-NOW.com."), Some(simulator));
        assert_eq!(matching(&overrides, "service-now.com"), None);
        assert_eq!(matching(&overrides, "evilservice-now.com"), None);
        assert_eq!(matching(&overrides, "acme.service-now.com.evil.example"), None);
        assert!(is_wildcard("*.service-now.com"));
        assert!(!is_wildcard("acme.service-now.com"));
    }

    #[tokio::test]
    async fn the_resolver_answers_a_wildcard_host_with_the_override() {
        let simulator: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let resolver = Resolver::new(vec![("*.service-now.com".to_owned(), simulator)]);
        let name: Name = "c00042.service-now.com".parse().unwrap();
        let found: Vec<SocketAddr> = resolver.resolve(name).await.unwrap().collect();
        assert_eq!(found, vec![simulator]);
    }
}
