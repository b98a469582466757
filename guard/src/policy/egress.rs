//! Egress policy in the concepts Zero to JupyterHub operators already use
//! (`singleuser.networkPolicy.egressAllowRules`): `dns`, `privateIPs`, `nonPrivateIPs`,
//! `cloudMetadataServer`, plus explicit CIDR + port + protocol allow and deny lists, and names
//! (`domain:`) in the allow list. Compiled to LPM-trie rules the kernel evaluates on every
//! connect and UDP send, and to the name tables of `domains`.

use ipnet::IpNet;
use serde::Deserialize;

use guard_abi::{EgressKey, EgressRule, EGRESS_ALLOW, EGRESS_DENY, EGRESS_DENY_SWITCH};

use super::domains::{DomainEntry, DomainName, DomainTables, TtlBounds};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
}

impl Protocol {
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Any => &[0],
            Protocol::Tcp => &[6],
            Protocol::Udp => &[17],
        }
    }
}

/// One allow or deny entry: an address range (`cidr`) or, in the allow list, a name
/// (`domain`), with ports and protocol.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    #[serde(default, deserialize_with = "cidr")]
    pub cidr: Option<IpNet>,
    #[serde(default, deserialize_with = "super::domains::deserialize")]
    pub domain: Option<DomainName>,
    /// Empty: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSpec {
    /// Port 53 (UDP and TCP) to any address but the metadata endpoints.
    pub dns: bool,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 — other users' pods, cluster services.
    #[serde(rename = "privateIPs")]
    pub private_ips: bool,
    /// Everything else, but link-local and the metadata endpoints.
    #[serde(rename = "nonPrivateIPs")]
    pub non_private_ips: bool,
    /// 169.254.169.254, fd00:ec2::254, 100.100.100.200.
    #[serde(rename = "cloudMetadataServer")]
    pub cloud_metadata_server: bool,
    pub allow: Vec<CidrRule>,
    pub deny: Vec<CidrRule>,
    /// How long the addresses a `domain` entry's name resolved to stay allowed.
    #[serde(rename = "dnsTTL")]
    pub dns_ttl: TtlBounds,
}

/// A CIDR (or a bare address, one host), with an error that says what is wrong with it.
fn cidr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
    use serde::de::Error;
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_cidr(&s).map_err(D::Error::custom)).transpose()
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let Some(prefix) = prefix else { return Ok(IpNet::from(ip)) };
    let bits: u8 = prefix.parse().map_err(|_| format!("prefix length {prefix:?} is not a number"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    Err(format!(
        "prefix length {bits} is longer than the {max} bits of an {} address",
        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
    ))
}

impl Default for EgressSpec {
    fn default() -> Self {
        Self {
            dns: true,
            private_ips: false,
            non_private_ips: true,
            cloud_metadata_server: false,
            allow: vec![],
            deny: vec![],
            dns_ttl: TtlBounds::default(),
        }
    }
}

pub const PRIVATE: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];
pub const METADATA: &[&str] = &["169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32"];
pub const LINK_LOCAL: &[&str] = &["169.254.0.0/16", "fe80::/10"];
pub const EVERYTHING: &[&str] = &["0.0.0.0/0", "::/0"];

/// Is this address a cloud metadata endpoint?
pub fn is_metadata(ip: &std::net::IpAddr) -> bool {
    METADATA.iter().filter_map(|c| c.parse::<IpNet>().ok()).any(|n| n.contains(ip))
}

/// One LPM entry: key, address prefix length, value.
pub type Entry = (EgressKey, u32, EgressRule);

fn entry(policy: u32, net: &IpNet, proto: u8, port: u16, action: u32) -> Entry {
    let (family, prefix, addr) = match net.trunc() {
        IpNet::V4(n) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&n.network().octets());
            (4u8, n.prefix_len() as u32, a)
        }
        IpNet::V6(n) => (6u8, n.prefix_len() as u32, n.network().octets()),
    };
    let rank = prefix * 4 + if port != 0 { 2 } else { 0 } + if proto != 0 { 1 } else { 0 };
    (EgressKey { policy, protocol: proto, family, port: port.to_be(), addr }, prefix, EgressRule { action, rank })
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

impl EgressSpec {
    /// The kernel rules for policy id `policy`. Later entries with the same key replace
    /// earlier ones, so explicit lists come last and deny after allow.
    pub fn compile(&self, policy: u32) -> Vec<Entry> {
        let mut out = Vec::new();
        // What a switch refuses, an allowed name's answer may still allow.
        let act = |b: bool| if b { EGRESS_ALLOW } else { EGRESS_DENY_SWITCH };
        for n in nets(EVERYTHING) {
            out.push(entry(policy, &n, 0, 0, act(self.non_private_ips)));
        }
        for n in nets(PRIVATE) {
            out.push(entry(policy, &n, 0, 0, act(self.private_ips)));
        }
        for n in nets(LINK_LOCAL) {
            out.push(entry(policy, &n, 0, 0, EGRESS_DENY));
        }
        for n in nets(METADATA) {
            let action = if self.cloud_metadata_server { EGRESS_ALLOW } else { EGRESS_DENY };
            out.push(entry(policy, &n, 0, 0, action));
        }
        if self.dns {
            // Port-specific, so it outranks the any-port entries of the same prefix (a cluster
            // DNS service sits in a private range); the metadata /32s still outrank it.
            for n in nets(EVERYTHING).iter().chain(nets(PRIVATE).iter()) {
                for proto in [6u8, 17] {
                    out.push(entry(policy, n, proto, 53, EGRESS_ALLOW));
                }
            }
        }
        for (rules, action) in [(&self.allow, EGRESS_ALLOW), (&self.deny, EGRESS_DENY)] {
            for r in rules {
                let Some(cidr) = &r.cidr else { continue };
                for &proto in r.protocol.numbers() {
                    if r.ports.is_empty() {
                        out.push(entry(policy, cidr, proto, 0, action));
                    }
                    for &port in &r.ports {
                        out.push(entry(policy, cidr, proto, port, action));
                    }
                }
            }
        }
        out
    }

    /// The allow list's names, in order (bit i of the kernel's masks is the i-th).
    pub fn domains(&self) -> impl Iterator<Item = &CidrRule> {
        self.allow.iter().filter(|r| r.domain.is_some())
    }

    /// The kernel's name tables for policy id `policy` (empty without `domain` entries).
    pub fn domain_tables(&self, policy: u32) -> DomainTables {
        let entries: Vec<DomainEntry<'_>> = self
            .domains()
            .filter_map(|r| {
                Some(DomainEntry { name: r.domain.as_ref()?, ports: &r.ports, protocols: r.protocol.numbers() })
            })
            .collect();
        super::domains::compile(policy, &entries, self.dns_ttl)
    }

    /// Entries the policy file cannot mean: (key below the policy's own, value, message).
    pub fn problems(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, r) in rules.iter().enumerate() {
                let key = format!("{list}[{i}]");
                match (&r.cidr, &r.domain) {
                    (Some(_), Some(d)) => {
                        out.push((key, d.to_string(), "an entry has either `cidr` or `domain`, not both".into()))
                    }
                    (None, None) => out.push((key, list.into(), "an entry needs `cidr` or `domain`".into())),
                    (None, Some(d)) if list == "deny" => out.push((
                        format!("{key}.domain"),
                        d.to_string(),
                        "names are allowed, not denied (a name's addresses change under it): deny by `cidr`".into(),
                    )),
                    _ => {}
                }
            }
        }
        let n = self.domains().count();
        if n > guard_abi::dns::MAX_DOMAINS_PER_POLICY {
            let max = guard_abi::dns::MAX_DOMAINS_PER_POLICY;
            out.push(("allow".into(), "domain".into(), format!("{n} `domain` entries; at most {max} per policy")));
        }
        let t = self.dns_ttl;
        if t.max == 0 || t.min > t.max {
            out.push((
                "dnsTTL".into(),
                "dnsTTL".into(),
                format!("min {} and max {} seconds: max must be at least 1 and at least min", t.min, t.max),
            ));
        }
        out
    }
}

/// Allow entries for hub endpoints (address, TCP port) in policy `policy`: the most specific
/// entries there are (a full-length prefix, port and protocol), so they outrank every switch
/// and list but an equally specific deny.
pub fn hub_entries(policy: u32, endpoints: &[(std::net::IpAddr, u16)]) -> Vec<Entry> {
    endpoints.iter().map(|(ip, port)| entry(policy, &IpNet::from(*ip), 6, *port, EGRESS_ALLOW)).collect()
}

/// The kernel's decision, in user space: the same ranking over the same entries. Used to test
/// the compiled policy and to explain a verdict.
pub fn evaluate(entries: &[Entry], ip: std::net::IpAddr, proto: u8, port: u16) -> u32 {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let mut best: Option<EgressRule> = None;
    for (k, prefix, rule) in entries {
        let port_ok = k.port == 0 || u16::from_be(k.port) == port;
        let proto_ok = k.protocol == 0 || k.protocol == proto;
        let net = match k.family {
            4 => IpNet::new([k.addr[0], k.addr[1], k.addr[2], k.addr[3]].into(), *prefix as u8).ok(),
            _ => IpNet::new(k.addr.into(), *prefix as u8).ok(),
        };
        if port_ok && proto_ok && net.is_some_and(|n| n.contains(&ip)) {
            best = match best {
                Some(b) if !(rule.rank > b.rank || (rule.rank == b.rank && weight(rule.action) > weight(b.action))) => {
                    Some(b)
                }
                _ => Some(*rule),
            };
        }
    }
    best.map(|b| b.action).unwrap_or(EGRESS_DENY)
}

/// How strongly an action holds on a tie (as the kernel ranks them).
fn weight(action: u32) -> u32 {
    match action {
        EGRESS_DENY => 2,
        EGRESS_DENY_SWITCH => 1,
        _ => 0,
    }
}

/// Refused, by whatever (an explicit deny or a switch).
pub fn refused(action: u32) -> bool {
    action != EGRESS_ALLOW
}

#[cfg(test)]
mod tests;
