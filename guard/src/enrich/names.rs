//! Names for addresses: the DNS answers each notebook received (reported by `dns_ingress`),
//! so an egress alert says `evil.example.org (198.51.100.8)`, not a bare address. Per
//! notebook, as the kernel allows by name per notebook: another notebook's lookup names
//! nothing here.

use std::{net::IpAddr, num::NonZeroUsize};

use lru::LruCache;

use crate::sensors::decode::{Dns, Egress};

/// (notebook, address) pairs remembered across the node; the least recently resolved go.
const REMEMBERED: usize = 16384;

pub struct Names {
    last: LruCache<(u64, IpAddr), String>,
}

impl Default for Names {
    fn default() -> Self {
        let cap = NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN);
        Self { last: LruCache::new(cap) }
    }
}

impl Names {
    /// Remembers the name each of the answer's addresses was given under.
    pub fn learn(&mut self, d: &Dns) {
        for a in &d.addrs {
            self.last.put((d.subject, *a), d.name.clone());
        }
    }

    /// The name that last resolved to the destination for that notebook, if one did.
    pub fn name(&mut self, g: &mut Egress) {
        g.name = self.lookup(g.subject, g.addr);
    }

    /// The name that last resolved to `addr` for notebook `subject`.
    pub fn lookup(&mut self, subject: u64, addr: IpAddr) -> Option<String> {
        self.last.get(&(subject, addr)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::decode::Meta;

    #[test]
    fn a_destination_is_named_by_its_notebooks_last_answer_only() {
        let meta = Meta { ktime_ns: 1, cpu: 0, pid: 1, tgid: 1, cgroup_id: 7 };
        let dns = |subject, name: &str, addr: &str| Dns {
            meta: meta.clone(),
            subject,
            name: name.into(),
            addrs: vec![addr.parse().unwrap()],
            more: 0,
            ttl: 60,
            domains: 0,
        };
        let mut n = Names::default();
        n.learn(&dns(7, "a.example.org", "198.51.100.8"));
        n.learn(&dns(7, "b.example.org", "198.51.100.8"));
        n.learn(&dns(9, "other.example.org", "198.51.100.9"));
        let mut g = Egress {
            meta,
            addr: "198.51.100.8".parse().unwrap(),
            port: 443,
            protocol: "tcp".into(),
            denied: true,
            sendmsg: false,
            comm: "curl".into(),
            subject: 7,
            name: None,
        };
        n.name(&mut g);
        assert_eq!(g.name.as_deref(), Some("b.example.org"), "the last answer");
        g.addr = "198.51.100.9".parse().unwrap();
        n.name(&mut g);
        assert_eq!(g.name, None, "another notebook's lookup");
    }
}
