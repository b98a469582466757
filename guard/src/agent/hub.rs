//! Notebooks always reach their hub: the endpoint each notebook was given (its
//! `JUPYTERHUB_API_URL`), learned from the environment of its first process, is allowed on
//! its port (TCP) in every egress policy, in every mode. An address is allowed at once; a name
//! is resolved off the event path, as the notebook resolves it (`discovery::hub`), and allowed
//! when the answer comes.

use std::{
    collections::{BTreeSet, HashSet},
    io::Write,
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Result;
use tokio::sync::mpsc::UnboundedSender;

use super::Pipeline;
use crate::discovery::hub::{self, hub_endpoints};

/// A hub endpoint: address and TCP port.
pub use crate::enforce::egress::Endpoint;

pub struct HubReach {
    /// Endpoints allowed in the kernel's egress rules.
    pub known: BTreeSet<Endpoint>,
    /// (host, port, network namespace) already looked up: each once.
    asked: HashSet<(String, u16, u64)>,
    /// Cgroups and local servers already looked at.
    seen: HashSet<u64>,
    /// Where resolver threads send what they found.
    found: UnboundedSender<Vec<Endpoint>>,
}

impl HubReach {
    pub fn new(found: UnboundedSender<Vec<Endpoint>>) -> Self {
        Self { known: BTreeSet::new(), asked: HashSet::new(), seen: HashSet::new(), found }
    }
}

impl<W: Write> Pipeline<W> {
    /// Learns the hub of notebook cgroup `id` from one of its processes (once per cgroup; a
    /// cgroup with no process yet is looked at again next time).
    pub(super) fn learn_hub_of_cgroup(&mut self, id: u64) -> Result<()> {
        if self.hub.seen.contains(&id) {
            return Ok(());
        }
        let pid = self.attributor.cgroups.resolve(id).and_then(|dir| {
            let rel = dir.strip_prefix("/").unwrap_or(&dir).to_path_buf();
            let procs = std::fs::read_to_string(self.mount.join(rel).join("cgroup.procs")).ok()?;
            procs.lines().next()?.trim().parse::<u32>().ok()
        });
        let Some(pid) = pid else { return Ok(()) };
        self.hub.seen.insert(id);
        self.learn_hub_of_process(pid)
    }

    /// Learns the hub of a LocalProcessSpawner server (once per process).
    pub(super) fn learn_hub_of_server(&mut self, tgid: u32) -> Result<()> {
        // Process keys live above every cgroup id's range.
        if !self.hub.seen.insert(1 << 63 | u64::from(tgid)) {
            return Ok(());
        }
        self.learn_hub_of_process(tgid)
    }

    /// Learns the hub named in process `pid`'s environment.
    fn learn_hub_of_process(&mut self, pid: u32) -> Result<()> {
        let proc_pid = hub::proc_dir(&self.proc_root, pid);
        let Ok(environ) = std::fs::read(proc_pid.join("environ")) else { return Ok(()) };
        let netns =
            std::fs::metadata(proc_pid.join("ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        let mut now = Vec::new();
        for (host, port) in hub_endpoints(&environ) {
            if !self.hub.asked.insert((host.clone(), port, netns)) {
                continue;
            }
            match host.parse::<IpAddr>() {
                Ok(ip) => now.push((ip, port)),
                Err(_) => self.resolve_hub_later(host, port, proc_pid.clone()),
            }
        }
        self.allow_hub(now)
    }

    /// Resolves `host` in a thread of its own; the run loop allows what it finds.
    fn resolve_hub_later(&self, host: String, port: u16, proc_pid: PathBuf) {
        let tx = self.hub.found.clone();
        let spawned = std::thread::Builder::new().name("guard-hub-dns".into()).spawn(move || {
            let ips = hub::resolve(&host, &proc_pid);
            if ips.is_empty() {
                tracing::warn!(%host, port, "the notebook's hub name did not resolve; it stays reachable only if the egress policy allows it");
            }
            let _ = tx.send(ips.into_iter().map(|ip| (ip, port)).collect());
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a resolver thread for the hub's name");
        }
    }

    /// Allows `found` in every egress policy of the current generation.
    pub(super) fn allow_hub(&mut self, found: Vec<Endpoint>) -> Result<()> {
        let new: Vec<Endpoint> = found.into_iter().filter(|e| !self.hub.known.contains(e)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let policy = self.detector.policy.clone();
        self.egress.allow_hub(&policy, &new)?;
        for (ip, port) in &new {
            tracing::info!(%ip, port, "hub endpoint: always reachable from notebooks");
        }
        self.hub.known.extend(new);
        Ok(())
    }
}
