//! Egress enforcement: the kernel's per-cgroup egress policy (`EGRESS_CG`), the policies'
//! LPM rules (`EGRESS_RULES`) and name tables (`DNS_NAMES`, `DOMAIN_PORTS`, `DNS_TTL`), kept in
//! step with the policy and the notebooks found.
//!
//! Rules are written per policy generation: a reload writes its rules beside the old ones,
//! switches every notebook over, and only then removes the old ones, so no connect is judged
//! against half a policy. The decision itself is made in the cgroup socket hooks.

use std::net::IpAddr;

use anyhow::Result;
use aya::maps::lpm_trie::Key;
use guard_abi::{dns::names as dns_names, names, EgressKey, EgressRule, EGRESS_ENFORCE, EGRESS_KEY_FIXED_BITS};

use crate::{
    policy::{domains::DomainTables, egress::hub_entries, Effective, Mode, Policy},
    sensors::maps::{EgressMaps, MapWrite},
};

/// A hub endpoint every notebook may reach (its API, for the server's own calls).
pub type Endpoint = (IpAddr, u16);

/// Generations kept apart in the policy id space (`EGRESS_CG` values).
const GENERATIONS: u32 = 1024;

pub struct EgressEnforcer {
    /// None when the egress hooks are not attached (`--no-egress`): every call is a no-op.
    maps: Option<EgressMaps>,
    /// What each cgroup's entry holds, to write only changes.
    now: crate::IdMap<u64, u32>,
    generation: u32,
}

/// Kernel egress policy id of policy `id` in generation `generation`.
fn policy_id(generation: u32, id: u32) -> u32 {
    (generation % GENERATIONS) * GENERATIONS + id
}

/// The kernel's rules for every egress policy of `policy` under `generation`, with the hub
/// endpoints known so far: what a load writes and a later reload removes.
fn rules(policy: &Policy, generation: u32, hub: &[Endpoint]) -> Vec<(Key<EgressKey>, EgressRule)> {
    let mut out = Vec::new();
    for (id, spec) in policy.egress_policies() {
        let pid = policy_id(generation, id);
        for (key, prefix, rule) in spec.compile(pid).into_iter().chain(hub_entries(pid, hub)) {
            out.push((Key::new(EGRESS_KEY_FIXED_BITS + prefix, key), rule));
        }
    }
    out
}

/// The name tables of every egress policy of `policy` under `generation`, with its kernel id.
fn domain_tables(policy: &Policy, generation: u32) -> Vec<(u32, DomainTables)> {
    policy
        .egress_policies()
        .into_iter()
        .map(|(id, spec)| {
            let pid = policy_id(generation, id);
            (pid, spec.domain_tables(pid))
        })
        .collect()
}

/// Writes (or, `remove`, takes out) one generation's name tables; stops at the first failure.
fn write_names(maps: &mut EgressMaps, tables: &[(u32, DomainTables)], remove: bool) -> Result<usize> {
    let mut n = 0;
    for (pid, t) in tables {
        if remove {
            for (k, _) in &t.names {
                let _ = maps.names.remove(k);
            }
            for (k, _) in &t.ports {
                let _ = maps.ports.remove(k);
            }
            let _ = maps.ttl.remove(pid);
            continue;
        }
        for (k, v) in &t.names {
            maps.names.insert(k, v, 0).in_map(dns_names::DNS_NAMES, || "loading the egress policy's names".into())?;
        }
        for (k, v) in &t.ports {
            maps.ports.insert(k, v, 0).in_map(dns_names::DOMAIN_PORTS, || "loading the names' ports".into())?;
        }
        maps.ttl.insert(pid, t.ttl, 0).in_map(dns_names::DNS_TTL, || "loading the names' TTL bounds".into())?;
        n += t.names.len();
    }
    Ok(n)
}

impl EgressEnforcer {
    /// Writes `policy`'s rules as generation 1.
    pub fn new(maps: Option<EgressMaps>, policy: &Policy) -> Result<Self> {
        let mut e = Self { maps, now: Default::default(), generation: 1 };
        e.write_rules(policy, 1, &[])?;
        e.set_fan_out(policy)?;
        Ok(e)
    }

    /// The fan-out threshold the kernel counts against (`fan_out`; 0 destinations: off).
    pub fn set_fan_out(&mut self, policy: &Policy) -> Result<()> {
        let Some(maps) = self.maps.as_mut() else { return Ok(()) };
        let f = policy.fan_out;
        let conf = guard_abi::fanout::FanoutConf {
            destinations: f.destinations,
            _pad: 0,
            window_ns: u64::from(f.seconds) * 1_000_000_000,
        };
        maps.fan_out
            .set(0, conf, 0)
            .in_map(guard_abi::fanout::names::FANOUT_CONF, || "setting the fan-out threshold".into())?;
        Ok(())
    }

    pub fn attached(&self) -> bool {
        self.maps.is_some()
    }

    fn write_rules(&mut self, policy: &Policy, generation: u32, hub: &[Endpoint]) -> Result<()> {
        let Some(maps) = self.maps.as_mut() else { return Ok(()) };
        let rules = rules(policy, generation, hub);
        for (k, rule) in &rules {
            if let Err(e) = maps.rules.insert(k, rule, 0).in_map(names::EGRESS_RULES, || "loading egress rules".into())
            {
                // Nothing half-written: what went in of this generation goes again.
                for (k, _) in &rules {
                    let _ = maps.rules.remove(k);
                }
                return Err(e.into());
            }
        }
        let tables = domain_tables(policy, generation);
        let labels = match write_names(maps, &tables, false) {
            Ok(n) => n,
            Err(e) => {
                let _ = write_names(maps, &tables, true);
                for (k, _) in &rules {
                    let _ = maps.rules.remove(k);
                }
                return Err(e);
            }
        };
        tracing::info!(rules = rules.len(), name_labels = labels, generation, "egress policy loaded");
        Ok(())
    }

    /// The `EGRESS_CG` value for `eff` (0 when the hooks are off).
    pub fn value_for(&self, eff: &Effective) -> u32 {
        if self.maps.is_none() {
            return 0;
        }
        let v = policy_id(self.generation, eff.egress_policy);
        match eff.mode {
            Mode::Enforce => v | EGRESS_ENFORCE,
            Mode::Monitor => v,
        }
    }

    /// What cgroup `id` is under (0: nothing written).
    pub fn value_of(&self, id: u64) -> u32 {
        self.now.get(&id).copied().unwrap_or(0)
    }

    /// Puts notebook cgroup `id` under its egress policy (monitor or enforce).
    pub fn set_cgroup(&mut self, id: u64, eff: &Effective) -> Result<()> {
        let v = self.value_for(eff);
        let Some(maps) = self.maps.as_mut() else { return Ok(()) };
        if self.now.get(&id) == Some(&v) {
            return Ok(());
        }
        maps.cgroups.insert(id, v, 0).in_map(names::EGRESS_CG, || format!("egress policy for cgroup {id}"))?;
        self.now.insert(id, v);
        Ok(())
    }

    /// Takes cgroup `id` out (removed, or replaced by a new incarnation).
    pub fn forget(&mut self, id: u64) {
        if let Some(m) = self.maps.as_mut() {
            let _ = m.cgroups.remove(&id);
        }
        self.now.remove(&id);
    }

    /// Cgroups with an entry for which `exists` says no (the stale-cgroup sweep).
    pub fn dead(&self, exists: impl Fn(u64) -> bool) -> Vec<u64> {
        let Some(m) = self.maps.as_ref() else { return vec![] };
        m.cgroups.keys().flatten().filter(|id| !exists(*id)).collect()
    }

    /// Allows `new` hub endpoints in every egress policy of the current generation.
    pub fn allow_hub(&mut self, policy: &Policy, new: &[Endpoint]) -> Result<()> {
        let Some(maps) = self.maps.as_mut() else { return Ok(()) };
        for (id, _) in policy.egress_policies() {
            for (key, prefix, rule) in hub_entries(policy_id(self.generation, id), new) {
                let k = Key::new(EGRESS_KEY_FIXED_BITS + prefix, key);
                maps.rules
                    .insert(&k, rule, 0)
                    .in_map(names::EGRESS_RULES, || "allowing the hub in the egress rules".into())?;
            }
        }
        Ok(())
    }

    /// A reload's first step: `new`'s rules beside the old ones, as the next generation. On
    /// error nothing of it stays and the old generation is still the one in force.
    pub fn begin_reload(&mut self, new: &Policy, hub: &[Endpoint]) -> Result<()> {
        self.write_rules(new, self.generation + 1, hub)?;
        self.generation += 1;
        self.set_fan_out(new)
    }

    /// A reload's last step, once every notebook was switched over: cgroups still on the old
    /// generation have no notebook any more and go, and so do the old rules.
    pub fn finish_reload(&mut self, old: &Policy, hub: &[Endpoint]) {
        let old_gen = self.generation - 1;
        let stale: Vec<u64> = self
            .now
            .iter()
            .filter(|(_, v)| (**v & !EGRESS_ENFORCE) / GENERATIONS == old_gen % GENERATIONS)
            .map(|(k, _)| *k)
            .collect();
        for id in stale {
            self.forget(id);
        }
        if let Some(maps) = self.maps.as_mut() {
            for (k, _) in rules(old, old_gen, hub) {
                let _ = maps.rules.remove(&k);
            }
            let _ = write_names(maps, &domain_tables(old, old_gen), true);
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_keep_policy_ids_apart_and_wrap() {
        assert_eq!(policy_id(1, 3), 1027);
        assert_ne!(policy_id(1, 3), policy_id(2, 3));
        assert_eq!(policy_id(GENERATIONS + 1, 3), policy_id(1, 3));
    }

    #[test]
    fn without_hooks_every_notebook_is_under_nothing() {
        let p = Policy::default_policy();
        let mut e = EgressEnforcer::new(None, &p).unwrap();
        let eff = p.effective(None, Some(Mode::Enforce));
        assert_eq!(e.value_for(&eff), 0);
        e.set_cgroup(7, &eff).unwrap();
        assert_eq!(e.value_of(7), 0);
        e.begin_reload(&p, &[]).unwrap();
        assert_eq!(e.generation(), 2);
        e.finish_reload(&p, &[]);
        assert!(e.dead(|_| false).is_empty());
    }
}
