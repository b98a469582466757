//! The network side of the sensor: the cgroup socket hooks (egress policy, DNS answers, first
//! payloads) on the cgroup2 root, and the packet/raw socket watch.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::HashMap;
use guard_abi::names;

use super::{pin_link, take, ProcessSensor};
use crate::sensors::maps::EgressMaps;

impl ProcessSensor {
    /// Loads and attaches the egress hooks (cgroup `connect4/6`, `sendmsg4/6`, `sock_create`,
    /// for ICMP and raw IP sockets, and `dns_ingress`, which reads the DNS answers notebooks
    /// receive, on the cgroup2 root) and the packet/raw
    /// socket watch (`attach_socket_watch`). Without any packet/raw socket hook, that one check
    /// is off and the agent says so. With pinning, the cgroup hooks are pinned like the exec
    /// programs: egress enforcement holds while the agent restarts, and the next one replaces
    /// them without a gap.
    pub fn attach_egress(&mut self, cgroup_root: &Path) -> Result<EgressMaps> {
        use aya::programs::{links::CgroupAttachMode, links::FdLink, CgroupSock, CgroupSockAddr};
        let root = std::fs::File::open(cgroup_root).with_context(|| format!("opening {}", cgroup_root.display()))?;
        let attached = |name: &str| format!("attaching {name} to {}", cgroup_root.display());
        for name in [names::PROG_CONNECT4, names::PROG_CONNECT6, names::PROG_SENDMSG4, names::PROG_SENDMSG6] {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
            // Links coexist with other programs on the cgroup whatever the mode; the kernel
            // refuses flags on cgroup link creation, so Single (no flags) it is.
            let id = prog.attach(&root, CgroupAttachMode::Single).with_context(|| attached(name))?;
            match &self.pin_dir {
                Some(dir) => {
                    let link = FdLink::try_from(prog.take_link(id)?).with_context(|| attached(name))?;
                    self.pinned.push((name, pin_link(link, &dir.join("links").join(name))?));
                }
                None => self.sock_links.push((name, id)),
            }
        }
        let name = names::PROG_SOCK_CREATE;
        let prog: &mut CgroupSock =
            self.ebpf.program_mut(name).context("program sock_create missing from the object")?.try_into()?;
        prog.load().context("verifying sock_create")?;
        let id = prog.attach(&root, CgroupAttachMode::Single).with_context(|| attached(name))?;
        match &self.pin_dir {
            Some(dir) => {
                let link = FdLink::try_from(prog.take_link(id)?).with_context(|| attached(name))?;
                self.pinned.push((name, pin_link(link, &dir.join("links").join(name))?));
            }
            None => self.sock_create_link = Some(id),
        }
        // The DNS answers notebooks receive, and their flows' first payloads.
        use aya::programs::CgroupSkbAttachType::{Egress, Ingress};
        let skb_programs = [
            (guard_abi::dns::names::PROG_DNS_INGRESS, Ingress),
            (guard_abi::stratum::names::PROG_STRATUM_EGRESS, Egress),
        ];
        for (name, way) in skb_programs {
            let prog: &mut aya::programs::CgroupSkb = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
            let id = prog.attach(&root, way, CgroupAttachMode::Single).with_context(|| attached(name))?;
            match &self.pin_dir {
                Some(dir) => {
                    let link = FdLink::try_from(prog.take_link(id)?).with_context(|| attached(name))?;
                    self.pinned.push((name, pin_link(link, &dir.join("links").join(name))?));
                }
                None => self.skb_links.push((name, id)),
            }
        }
        // Packet/raw sockets: a kprobe where the kernel has them (costs only socket()), else
        // the cap_capable tracepoint (costs only capability checks), else the socket()
        // tracepoint (costs every syscall a little: the slow syscall path).
        match self.attach_socket_watch() {
            Ok(how) => tracing::info!(hook = how, "packet/raw socket detection attached"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "packet/raw socket detection is off"),
        }
        Ok(EgressMaps {
            cgroups: HashMap::try_from(take(&mut self.ebpf, names::EGRESS_CG)?)?,
            rules: aya::maps::LpmTrie::try_from(take(&mut self.ebpf, names::EGRESS_RULES)?)?,
            names: HashMap::try_from(take(&mut self.ebpf, guard_abi::dns::names::DNS_NAMES)?)?,
            ports: HashMap::try_from(take(&mut self.ebpf, guard_abi::dns::names::DOMAIN_PORTS)?)?,
            ttl: HashMap::try_from(take(&mut self.ebpf, guard_abi::dns::names::DNS_TTL)?)?,
            fan_out: aya::maps::Array::try_from(take(&mut self.ebpf, guard_abi::fanout::names::FANOUT_CONF)?)?,
        })
    }

    /// Attaches the cheapest packet/raw socket hook this kernel allows; returns which.
    fn attach_socket_watch(&mut self) -> Result<&'static str> {
        use aya::programs::{BtfTracePoint, KProbe, TracePoint};
        let kprobe = (|| -> Result<()> {
            let prog: &mut KProbe =
                self.ebpf.program_mut(names::PROG_SOCKET_KPROBE).context("socket program missing")?.try_into()?;
            prog.load()?;
            prog.attach("security_socket_create", 0)?;
            Ok(())
        })();
        let Err(kprobe) = kprobe else { return Ok("kprobe security_socket_create") };
        let capable = (|| -> Result<()> {
            let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
            let prog: &mut BtfTracePoint =
                self.ebpf.program_mut(names::PROG_SOCKET_CAPABLE).context("socket program missing")?.try_into()?;
            prog.load("cap_capable", &btf)?;
            prog.attach()?;
            Ok(())
        })();
        let Err(capable) = capable else { return Ok("tp_btf cap_capable (CAP_NET_RAW checks)") };
        let tracepoint = (|| -> Result<()> {
            let prog: &mut TracePoint =
                self.ebpf.program_mut(names::PROG_SOCKET_TRACEPOINT).context("socket program missing")?.try_into()?;
            prog.load()?;
            prog.attach("syscalls", "sys_enter_socket")?;
            Ok(())
        })();
        match tracepoint {
            Ok(()) => {
                tracing::info!(
                    kprobe = %format!("{kprobe:#}"),
                    cap_capable = %format!("{capable:#}"),
                    "no kprobes and no cap_capable tracepoint: using the socket() tracepoint (slow syscall path)"
                );
                Ok("tracepoint syscalls:sys_enter_socket")
            }
            Err(e) => bail!("kprobe: {kprobe:#}; cap_capable: {capable:#}; socket() tracepoint: {e:#}"),
        }
    }
}
