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
mod tests {
    use super::*;

    /// Allowed or refused (by a switch or an explicit deny alike).
    fn ev(spec: &EgressSpec, ip: &str, proto: u8, port: u16) -> u32 {
        let action = evaluate(&spec.compile(1), ip.parse().unwrap(), proto, port);
        if refused(action) {
            EGRESS_DENY
        } else {
            EGRESS_ALLOW
        }
    }

    #[test]
    fn a_port_allow_list_and_banned_addresses_as_public_hubs_write_them() {
        // mybinder.org's shape: the web, git and DNS out, nothing else; a banned pool range.
        let s: EgressSpec = serde_yaml_ng::from_str(
            "nonPrivateIPs: false\nallow:\n  - {cidr: 0.0.0.0/0, ports: [80, 443, 9418], protocol: tcp}\n  - {cidr: \"::/0\", ports: [80, 443, 9418], protocol: tcp}\ndeny:\n  - {cidr: 198.51.100.0/24}\n",
        )
        .unwrap();
        assert_eq!(ev(&s, "203.0.113.10", 6, 443), EGRESS_ALLOW);
        assert_eq!(ev(&s, "2001:db8::10", 6, 9418), EGRESS_ALLOW, "git");
        assert_eq!(ev(&s, "203.0.113.10", 6, 3333), EGRESS_DENY, "a pool port");
        assert_eq!(ev(&s, "203.0.113.10", 17, 443), EGRESS_DENY, "QUIC is not on the list");
        assert_eq!(ev(&s, "198.51.100.8", 6, 443), EGRESS_DENY, "banned, even on an allowed port");
        assert_eq!(ev(&s, "10.96.0.10", 17, 53), EGRESS_ALLOW, "DNS (the dns switch)");
        assert_eq!(ev(&s, "169.254.169.254", 6, 80), EGRESS_DENY, "metadata");
    }

    #[test]
    fn names_may_allow_what_a_switch_refuses_never_an_explicit_deny() {
        let s: EgressSpec = serde_yaml_ng::from_str(
            "nonPrivateIPs: false\nallow:\n  - {domain: pypi.org, ports: [443], protocol: tcp}\ndeny:\n  - {cidr: 203.0.113.66}\n",
        )
        .unwrap();
        let e = s.compile(1);
        let at = |ip: &str| evaluate(&e, ip.parse().unwrap(), 6, 443);
        assert_eq!(at("198.51.100.1"), EGRESS_DENY_SWITCH, "nonPrivateIPs off");
        assert_eq!(at("10.0.0.5"), EGRESS_DENY_SWITCH, "privateIPs off");
        assert_eq!(at("203.0.113.66"), EGRESS_DENY, "the deny list");
        assert_eq!(at("169.254.169.254"), EGRESS_DENY, "metadata");
        assert_eq!(at("169.254.1.1"), EGRESS_DENY, "link-local");
        assert!(s.problems().is_empty());
        let t = s.domain_tables(1);
        assert_eq!((t.match_name("pypi.org"), t.port_mask(6, 443), t.port_mask(6, 80)), (1, 1, 0));
        assert_eq!((t.ttl.min, t.ttl.max), (60, 3600));
    }

    #[test]
    fn entries_the_policy_cannot_mean_are_named() {
        let bad = |yaml: &str| -> Vec<String> {
            let s: EgressSpec = serde_yaml_ng::from_str(yaml).unwrap();
            s.problems().into_iter().map(|(k, _, m)| format!("{k}: {m}")).collect()
        };
        assert_eq!(bad("allow:\n  - {ports: [443]}\n"), ["allow[0]: an entry needs `cidr` or `domain`"]);
        assert!(bad("allow:\n  - {cidr: 10.0.0.1, domain: a.org}\n")[0].contains("not both"));
        assert!(bad("deny:\n  - {domain: a.org}\n")[0].starts_with("deny[0].domain: names are allowed, not denied"));
        assert!(bad("dnsTTL: {min: 10, max: 5}\n")[0].starts_with("dnsTTL: "));
        let many: String = (0..65).map(|i| format!("  - {{domain: n{i}.org}}\n")).collect();
        assert!(bad(&format!("allow:\n{many}"))[0].contains("65 `domain` entries; at most 64"));
        let err = serde_yaml_ng::from_str::<EgressSpec>("allow:\n  - {domain: 10.0.0.5}\n").unwrap_err().to_string();
        assert!(err.contains("cidr: 10.0.0.5"), "{err}");
    }

    #[test]
    fn z2jh_defaults() {
        let s = EgressSpec::default();
        assert_eq!(ev(&s, "203.0.113.10", 6, 443), EGRESS_ALLOW, "public");
        assert_eq!(ev(&s, "10.0.0.5", 6, 5432), EGRESS_DENY, "private: other pods");
        assert_eq!(ev(&s, "10.96.0.10", 17, 53), EGRESS_ALLOW, "cluster DNS");
        assert_eq!(ev(&s, "169.254.169.254", 6, 80), EGRESS_DENY, "metadata");
        assert_eq!(ev(&s, "169.254.169.254", 17, 53), EGRESS_DENY, "metadata even on 53");
        assert_eq!(ev(&s, "100.100.100.200", 6, 80), EGRESS_DENY);
        assert_eq!(ev(&s, "fd00:ec2::254", 6, 80), EGRESS_DENY);
        assert_eq!(ev(&s, "::ffff:169.254.169.254", 6, 80), EGRESS_DENY, "v4-mapped");
        assert_eq!(ev(&s, "2001:db8::10", 6, 443), EGRESS_ALLOW);
        assert_eq!(ev(&s, "fd12::1", 6, 443), EGRESS_DENY, "ULA is private");
    }

    #[test]
    fn the_hub_is_reachable_on_its_port_whatever_the_switches_say() {
        let s: EgressSpec = serde_yaml_ng::from_str("nonPrivateIPs: false\n").unwrap();
        let mut entries = s.compile(1);
        entries.extend(hub_entries(1, &[("10.0.0.5".parse().unwrap(), 8081), ("fd00::5".parse().unwrap(), 8081)]));
        let ev = |ip: &str, proto, port| match evaluate(&entries, ip.parse().unwrap(), proto, port) {
            EGRESS_ALLOW => EGRESS_ALLOW,
            _ => EGRESS_DENY,
        };
        assert_eq!(ev("10.0.0.5", 6, 8081), EGRESS_ALLOW, "the hub, in a private range");
        assert_eq!(ev("::ffff:10.0.0.5", 6, 8081), EGRESS_ALLOW, "v4-mapped");
        assert_eq!(ev("fd00::5", 6, 8081), EGRESS_ALLOW);
        assert_eq!(ev("10.0.0.5", 6, 5432), EGRESS_DENY, "another port of the hub's host");
        assert_eq!(ev("10.0.0.5", 17, 8081), EGRESS_DENY, "UDP");
        assert_eq!(ev("10.0.0.6", 6, 8081), EGRESS_DENY, "another private address");
    }

    #[test]
    fn explicit_lists_and_switches() {
        let s: EgressSpec = serde_yaml_ng::from_str(
            "nonPrivateIPs: false\nallow:\n  - {cidr: 10.1.2.0/24, ports: [5432], protocol: tcp}\n  - {cidr: 203.0.113.0/24}\ndeny:\n  - {cidr: 203.0.113.66/32, ports: [443]}\n",
        )
        .unwrap();
        assert_eq!(ev(&s, "10.1.2.3", 6, 5432), EGRESS_ALLOW);
        assert_eq!(ev(&s, "10.1.2.3", 17, 5432), EGRESS_DENY, "tcp only");
        assert_eq!(ev(&s, "10.1.2.3", 6, 22), EGRESS_DENY);
        assert_eq!(ev(&s, "203.0.113.9", 6, 443), EGRESS_ALLOW);
        assert_eq!(ev(&s, "203.0.113.66", 6, 443), EGRESS_DENY, "deny list");
        assert_eq!(ev(&s, "198.51.100.1", 6, 443), EGRESS_DENY, "nonPrivateIPs off");
        assert!(serde_yaml_ng::from_str::<EgressSpec>("privateIps: true\n").is_err(), "Z2JH spelling only");
        assert_eq!(
            parse_cidr("10.0.0.0/33").unwrap_err(),
            "prefix length 33 is longer than the 32 bits of an IPv4 address"
        );
        assert!(parse_cidr("fd00::/129").unwrap_err().contains("128 bits of an IPv6"));
        assert!(parse_cidr("10.0.0.300/8").unwrap_err().contains("not an IPv4 or IPv6 address"));
        assert_eq!(parse_cidr("10.1.2.3").unwrap(), "10.1.2.3/32".parse::<IpNet>().unwrap(), "one host");
    }
}
