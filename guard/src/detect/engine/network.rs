//! Alerts on the network events: refused (or would-be refused) egress, packet and raw
//! sockets, and seccomp drift.

use super::Detector;
use crate::enrich::MAX_CHAIN;
use crate::{
    detect::alert::{Action, Alert},
    discovery::attribution::Attribution,
    policy::rules::{self, Rule},
    process::table::{cmdline, ProcInfo, ProcessTable},
    sensors::decode::{l4proto, Egress, Fanout, Socket, Stratum},
};

/// Falco's destination fields, and the name the notebook looked the address up by.
fn destination(a: &mut Alert, addr: std::net::IpAddr, port: u16, proto: String, name: Option<String>) {
    a.set("fd.sip", addr.to_string())
        .set("fd.sport", port)
        .set("fd.l4proto", proto)
        .set("fd.name", std::net::SocketAddr::new(addr, port).to_string())
        .set_opt("fd.sip.name", name);
}
use guard_abi::kconst::{
    AF_INET, AF_INET6, AF_PACKET, IPPROTO_ICMP, IPPROTO_ICMPV6, NR_I386_SOCKET, NR_I386_SOCKETCALL, NR_IO_URING_ENTER,
    NR_SOCKET, SOCK_DGRAM,
};

impl Detector {
    /// A connect or send the notebook's egress policy refused (enforce) or would refuse.
    pub fn on_egress(&mut self, g: &Egress, table: &ProcessTable, who: &Attribution) -> Vec<Alert> {
        let metadata = crate::policy::egress::is_metadata(&g.addr);
        let rule = if metadata { rules::METADATA_ACCESS } else { rules::UNEXPECTED_EGRESS };
        if !self.enabled(&rule) {
            return vec![];
        }
        let action = if g.denied { Action::Denied } else { Action::Alert };
        let mut a = self.net_alert(&rule, &g.meta, &g.comm, table, who, action);
        a.set("evt.type", if g.sendmsg { "sendmsg" } else { "connect" });
        destination(&mut a, g.addr, g.port, g.protocol.clone(), g.name.clone());
        a.finish_output(rule.summary);
        vec![a]
    }

    /// A notebook process that reached the fan-out threshold: `guard.count` destinations in
    /// `guard.window_ms`, the last one in `fd.name` (named when the notebook looked it up).
    pub fn on_fanout(
        &mut self,
        f: &Fanout,
        name: Option<String>,
        table: &ProcessTable,
        who: &Attribution,
    ) -> Vec<Alert> {
        let rule = rules::FAN_OUT;
        if !self.enabled(&rule) {
            return vec![];
        }
        let mut a = self.net_alert(&rule, &f.meta, &f.comm, table, who, Action::Alert);
        a.set("evt.type", "connect");
        destination(&mut a, f.addr, f.port, l4proto(f.protocol.into()), name);
        a.set("guard.count", f.destinations).set("guard.window_ms", f.elapsed_ms);
        a.finish_output(rule.summary);
        vec![a]
    }

    /// A notebook flow whose first payload was a mining call (`notebook.crypto_mining`, T1496):
    /// dropped in the kernel under enforcement, and its process `killed` when it was ended.
    pub fn on_stratum(
        &mut self,
        m: &Stratum,
        name: Option<String>,
        killed: bool,
        table: &ProcessTable,
        who: &Attribution,
    ) -> Vec<Alert> {
        let rule = rules::CRYPTO_MINING;
        if !self.enabled(&rule) {
            return vec![];
        }
        let action = match (killed, m.dropped) {
            (true, _) => Action::Killed,
            (false, true) => Action::Denied,
            _ => Action::Alert,
        };
        let comm = table.get(m.meta.tgid).map(|p| p.comm.clone()).unwrap_or_default();
        let mut a = self.net_alert(&rule, &m.meta, &comm, table, who, action);
        a.set("evt.type", "send");
        destination(&mut a, m.addr, m.port, "tcp".into(), name);
        a.set("guard.detail", format!("stratum method={}", m.method));
        a.finish_output(rule.summary);
        vec![a]
    }

    /// A packet (AF_PACKET), raw IP or ICMP datagram socket opened in a notebook.
    pub fn on_socket(&mut self, k: &Socket, table: &ProcessTable, who: &Attribution) -> Vec<Alert> {
        // SOCK_DGRAM with ICMP or ICMPv6: a "ping" socket, an egress channel, not sniffing.
        let icmp = k.sock_type == SOCK_DGRAM
            && matches!((k.family, k.protocol), (AF_INET, IPPROTO_ICMP) | (AF_INET6, IPPROTO_ICMPV6));
        let rule = if icmp { &rules::ICMP_SOCKET } else { &rules::PACKET_SOCKET };
        if !self.enabled(rule) {
            return vec![];
        }
        let action = if k.denied { Action::Denied } else { Action::Alert };
        let mut a = self.net_alert(rule, &k.meta, &k.comm, table, who, action);
        let family = match k.family {
            AF_PACKET => "AF_PACKET".to_string(),
            AF_INET => "AF_INET".to_string(),
            AF_INET6 => "AF_INET6".to_string(),
            // Asked for through io_uring or socketcall: a packet or raw socket, which one is
            // not known (both need CAP_NET_RAW, which is what was checked).
            0 => "AF_PACKET or raw".to_string(),
            f => f.to_string(),
        };
        // The call's number as the kernel saw it: x86_64's table, except i386's socket (359)
        // and socketcall (102), numbers no native call that checks CAP_NET_RAW has.
        let via = k.syscall.map(|n| match u64::from(n) {
            NR_SOCKET => "socket".to_string(),
            NR_IO_URING_ENTER => "io_uring_enter".to_string(),
            NR_I386_SOCKET => "socket (i386)".to_string(),
            NR_I386_SOCKETCALL => "socketcall (i386)".to_string(),
            n => n.to_string(),
        });
        a.set("evt.type", "socket")
            .set("fd.family", family)
            .set("fd.socket_type", k.sock_type)
            .set("fd.protocol", k.protocol)
            .set_opt("syscall.type", via);
        a.finish_output(rule.summary);
        vec![a]
    }

    fn net_alert(
        &mut self,
        rule: &Rule,
        meta: &crate::sensors::decode::Meta,
        comm: &str,
        table: &ProcessTable,
        who: &Attribution,
        action: Action,
    ) -> Alert {
        let r = &self.redactor;
        let chain: Vec<ProcInfo> = table.chain(meta.tgid, MAX_CHAIN).into_iter().cloned().collect();
        let me = chain.first();
        let parent = chain.get(1);
        let kernel = chain.iter().find_map(|p| p.kernel.clone());
        let mut a = Alert::new(rule, self.clock.rfc3339(meta.ktime_ns), &self.hostname, action);
        a.set("proc.pid", meta.tgid)
            .set("proc.name", comm.to_string())
            .set_opt("proc.exepath", me.and_then(|p| p.exe.as_ref()).map(|p| p.to_string_lossy().into_owned()))
            .set_opt("proc.cmdline", me.map(|p| r.text(&cmdline(&p.argv)).into_owned()))
            .set_opt("proc.pexepath", parent.and_then(|p| p.exe.as_ref()).map(|p| p.to_string_lossy().into_owned()))
            .set_opt("proc.pcmdline", parent.map(|p| r.text(&cmdline(&p.argv)).into_owned()));
        a.notebook_fields(who, kernel.as_deref());
        a
    }

    /// A syscall outside a notebook's assigned seccomp profile (from the recorder's bitmap:
    /// the notebook is known, the process is not).
    pub fn seccomp_drift(&self, d: &crate::seccomp::drift::Drift) -> Option<Alert> {
        if !self.enabled(&rules::SECCOMP_DRIFT) {
            return None;
        }
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        let who = &d.who;
        let mut a = Alert::new(&rules::SECCOMP_DRIFT, now, &self.hostname, Action::Alert);
        a.set("evt.type", "syscall")
            .set("syscall.name", d.syscall.clone())
            .set("syscall.arch", d.arch.oci_name())
            .set("seccomp.profile", d.profile.clone())
            .set("seccomp.verdict", d.verdict.clone());
        a.notebook_fields(who, None);
        a.finish_output(&format!(
            "{} ({} {}, the profile answers {})",
            rules::SECCOMP_DRIFT.summary,
            d.syscall,
            d.arch,
            d.verdict
        ));
        Some(a)
    }
}
