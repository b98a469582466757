//! Names in egress allow entries (`{domain: pypi.org, ports: [443]}`, `*.example.org`): what
//! a name may be, and the kernel's tables for them — a trie of labels, last label first, with
//! the entries each node ends (exactly, or as `*.`), one bit per entry; which entries allow
//! each protocol and port; and the TTL floor and ceiling of the policy's answers.

use std::collections::HashMap;

use serde::Deserialize;

use guard_abi::dns::{DnsTtl, DomainPortKey, NameKey, NameNode, LABEL_MAX, MAX_DOMAINS_PER_POLICY, MAX_NAME_LABELS};

/// An allowed name: exact, or every name below a suffix (`*.example.org`, not `example.org`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainName {
    pub wildcard: bool,
    /// Lower case, in the order written (`["pypi", "org"]`).
    pub labels: Vec<String>,
}

impl std::fmt::Display for DomainName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.labels.join("."))
    }
}

impl DomainName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("{s:?} names no domain"));
        }
        if rest.contains('*') {
            return Err(format!("{s:?}: a wildcard is only `*.` in front of a name (`*.example.org`)"));
        }
        if rest.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!("{s:?} is an address: write it as `cidr: {rest}`"));
        }
        let labels: Vec<String> = rest.split('.').map(str::to_ascii_lowercase).collect();
        // The kernel follows this many labels, the last one first; a `*.` entry needs one more.
        let most = MAX_NAME_LABELS - wildcard as usize;
        if labels.len() > most {
            return Err(format!("{s:?} has {} labels; at most {most} are followed", labels.len()));
        }
        if rest.len() > 253 {
            return Err(format!("{s:?} is longer than 253 characters"));
        }
        for l in &labels {
            let ok = !l.is_empty()
                && l.len() <= LABEL_MAX
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-');
            if !ok {
                return Err(format!(
                    "{s:?}: label {l:?} is not a DNS label (1 to 63 letters, digits, '-' or '_', not starting or ending with '-')"
                ));
            }
        }
        Ok(Self { wildcard, labels })
    }

    /// Does this entry allow `name` (as a resolver asked for it, any case, trailing dot or not)?
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let suffix = self.labels.join(".");
        if self.wildcard {
            name.strip_suffix(&suffix).is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        } else {
            name == suffix
        }
    }
}

pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DomainName>, D::Error> {
    use serde::de::Error;
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| DomainName::parse(&s).map_err(D::Error::custom)).transpose()
}

/// `dnsTTL`: how long an answer's addresses stay allowed, whatever TTL the answer gives.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TtlBounds {
    /// Seconds. A floor: clients keep addresses a little past short TTLs (CDNs give 20 s).
    pub min: u32,
    /// Seconds. A ceiling: a name dropped from the policy or moved stops allowing its old
    /// addresses within this.
    pub max: u32,
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self { min: 60, max: 3600 }
    }
}

/// One domain entry, as the kernel tables need it.
pub struct DomainEntry<'a> {
    pub name: &'a DomainName,
    /// Empty: every port.
    pub ports: &'a [u16],
    /// 0 (any) or IPPROTO_TCP / IPPROTO_UDP.
    pub protocols: &'a [u8],
}

/// A policy's kernel tables for its names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DomainTables {
    pub names: Vec<(NameKey, NameNode)>,
    pub ports: Vec<(DomainPortKey, u64)>,
    pub ttl: DnsTtl,
}

/// The label key the kernel builds for `label` under `parent`.
pub fn name_key(policy: u32, parent: u32, label: &str) -> NameKey {
    let mut key = NameKey { policy, parent, len: label.len() as u32, ..NameKey::default() };
    key.label[..label.len()].copy_from_slice(label.as_bytes());
    key
}

/// Tables for policy `policy`; entry i is bit i. Callers check the entry count first.
pub fn compile(policy: u32, entries: &[DomainEntry<'_>], ttl: TtlBounds) -> DomainTables {
    debug_assert!(entries.len() <= MAX_DOMAINS_PER_POLICY);
    let mut nodes: HashMap<(u32, String), NameNode> = HashMap::new();
    let mut order: Vec<(u32, String)> = Vec::new();
    let mut ports: HashMap<(u8, u16), u64> = HashMap::new();
    let mut next_id = 1u32;
    for (i, e) in entries.iter().enumerate().take(MAX_DOMAINS_PER_POLICY) {
        let bit = 1u64 << i;
        let mut parent = 0u32;
        let n = e.name.labels.len();
        for (depth, label) in e.name.labels.iter().rev().enumerate() {
            let k = (parent, label.clone());
            let node = nodes.entry(k.clone()).or_insert_with(|| {
                order.push(k);
                next_id += 1;
                NameNode { id: next_id - 1, ..NameNode::default() }
            });
            if depth + 1 == n {
                if e.name.wildcard {
                    node.wild |= bit;
                } else {
                    node.exact |= bit;
                }
            }
            parent = node.id;
        }
        for &proto in e.protocols {
            if e.ports.is_empty() {
                *ports.entry((proto, 0)).or_default() |= bit;
            }
            for &p in e.ports {
                *ports.entry((proto, p.to_be())).or_default() |= bit;
            }
        }
    }
    let mut out = DomainTables { ttl: DnsTtl { min: ttl.min, max: ttl.max }, ..Default::default() };
    for k in order {
        let node = nodes[&k];
        out.names.push((name_key(policy, k.0, &k.1), node));
    }
    let mut ports: Vec<_> = ports.into_iter().collect();
    ports.sort();
    out.ports = ports
        .into_iter()
        .map(|((protocol, port), mask)| (DomainPortKey { policy, protocol, _pad: 0, port }, mask))
        .collect();
    out
}

impl DomainTables {
    /// What the kernel's walk gives for `name`: the entries it matches (its tests' model).
    pub fn match_name(&self, name: &str) -> u64 {
        let labels: Vec<&str> = name.strip_suffix('.').unwrap_or(name).split('.').collect();
        let find = |key: &NameKey| self.names.iter().find(|(k, _)| k == key).map(|(_, n)| *n);
        let (mut parent, mut mask) = (0u32, 0u64);
        for (k, label) in labels.iter().rev().enumerate().take(MAX_NAME_LABELS) {
            let policy = self.names.first().map(|(k, _)| k.policy).unwrap_or(0);
            let Some(node) = find(&name_key(policy, parent, &label.to_ascii_lowercase())) else { break };
            mask |= if k + 1 < labels.len() { node.wild } else { node.exact };
            parent = node.id;
        }
        mask
    }

    /// Entries allowing `proto` on `port` (the kernel's four lookups).
    pub fn port_mask(&self, proto: u8, port: u16) -> u64 {
        let want = [(proto, port.to_be()), (proto, 0), (0, port.to_be()), (0, 0)];
        self.ports.iter().filter(|(k, _)| want.contains(&(k.protocol, k.port))).fold(0, |m, (_, v)| m | v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    #[test]
    fn names_parse_strictly_and_say_why_not() {
        assert_eq!(d("PyPI.org.").labels, ["pypi", "org"]);
        assert!(d("*.example.org").wildcard);
        let err = |s: &str| DomainName::parse(s).unwrap_err();
        assert!(err("10.0.0.5").contains("cidr: 10.0.0.5"), "{}", err("10.0.0.5"));
        assert!(err("a.*.org").contains("wildcard"));
        assert!(err("bad_label-.org").contains("not a DNS label"));
        assert!(err("a..org").contains("not a DNS label"));
        assert!(err("*.").contains("names no domain"));
        let deep = vec!["a"; 17].join(".");
        assert!(err(&deep).contains("at most 16"));
    }

    #[test]
    fn the_trie_matches_exact_names_and_names_below_a_wildcard() {
        let (pypi, wild, files) = (d("pypi.org"), d("*.example.org"), d("files.pythonhosted.org"));
        let tcp = [6u8];
        let any = [0u8];
        let entries = [
            DomainEntry { name: &pypi, ports: &[443], protocols: &tcp },
            DomainEntry { name: &wild, ports: &[], protocols: &any },
            DomainEntry { name: &files, ports: &[443, 80], protocols: &tcp },
        ];
        let t = compile(7, &entries, TtlBounds::default());
        assert_eq!(t.match_name("pypi.org"), 0b001);
        assert_eq!(t.match_name("PYPI.ORG."), 0b001, "any case");
        assert_eq!(t.match_name("evil.pypi.org"), 0, "below an exact name");
        assert_eq!(t.match_name("a.b.example.org"), 0b010);
        assert_eq!(t.match_name("example.org"), 0, "a wildcard is strictly below");
        assert_eq!(t.match_name("files.pythonhosted.org"), 0b100);
        assert_eq!(t.match_name("pythonhosted.org"), 0);
        assert_eq!(t.port_mask(6, 443), 0b111);
        assert_eq!(t.port_mask(6, 80), 0b110);
        assert_eq!(t.port_mask(17, 443), 0b010, "udp: only the any-protocol entry");
        // `org` is shared: one node for the three names' last label.
        assert_eq!(t.names.iter().filter(|(k, _)| k.parent == 0).count(), 1);
        assert!(t.names.iter().all(|(k, _)| k.policy == 7));
        for (name, want) in [("pypi.org", true), ("x.pypi.org", false)] {
            assert_eq!(pypi.matches(name), want, "{name}");
        }
        assert!(wild.matches("a.example.org") && !wild.matches("example.org") && !wild.matches("badexample.org"));
    }
}
