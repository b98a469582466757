//! The detection engine: one exec, with the facts enrichment gathered (its notebook, lineage,
//! the root's identities), judged against the policy. It reads nothing itself.
//!
//! Python is decided by identity (the loaded file's device + inode), never by name. Benign
//! helpers are allowed by identity + parent + arguments. What is left is judged by the rules;
//! a generic "non-Python exec" fires only when no more specific rule did.

use std::sync::Arc;

use super::alert::{Action, Alert};
use crate::{
    clock::BootClock,
    discovery::attribution::Attribution,
    enrich::ExecFacts,
    policy::{
        rules::{self, Rule},
        ArgMatcher, Effective, Mode, Policy,
    },
    process::table::{ProcessTable, Role},
    redact::Redactor,
    sensors::decode::Exec,
};
use guard_abi::exec_flags;

mod incident;
mod judge;
mod network;
mod persistence;
pub mod posture;

use incident::incident;

/// What one exec led to.
#[derive(Debug, Default)]
pub struct Outcome {
    pub alerts: Vec<Alert>,
    pub role: Role,
    /// A notebook server started (its tgid): terminals are shells whose parent is this.
    pub server: Option<u32>,
}

pub struct Detector {
    pub policy: Arc<Policy>,
    pub mode_flag: Option<Mode>,
    helper_args: Vec<ArgMatcher>,
    hostname: String,
    clock: BootClock,
    pub redactor: Redactor,
}

impl Detector {
    pub fn new(policy: Arc<Policy>, mode_flag: Option<Mode>) -> Self {
        let helper_args = policy.helpers.iter().map(|h| ArgMatcher::new(&h.args)).collect();
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        Self { policy, mode_flag, helper_args, hostname, clock: BootClock::new(), redactor: Redactor::new() }
    }

    /// Swaps the policy (reload).
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.helper_args = policy.helpers.iter().map(|h| ArgMatcher::new(&h.args)).collect();
        self.policy = policy;
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The policy's decision for notebook `who` (mode, allowances, egress policy).
    pub fn effective(&self, who: &Attribution) -> Effective {
        self.policy.effective(Some(who), self.mode_flag)
    }

    /// The verdict on one exec in a notebook: its role and its alerts.
    pub fn on_exec(&mut self, f: &mut ExecFacts<'_>, table: &mut ProcessTable, eff: &Effective) -> Outcome {
        let (role, mut matched) = self.judge(f, eff);
        // A miner is known by what its command line tells it, whatever runs it (a renamed
        // binary, Python running a miner module).
        if let Some(id) = super::mining::matches(&f.argv, &self.policy.mining_patterns) {
            matched.push((rules::CRYPTO_MINING, format!("pattern={id}")));
        }
        if !f.lineage_known {
            matched.push((rules::UNKNOWN_LINEAGE, String::new()));
        }
        // Drift adds to an exec already flagged: a Python script made in the session (a user's
        // `#!/usr/bin/env python3` tool, a console script) runs nothing its kernel could not.
        if let Some(m) = f.made.as_ref().filter(|_| !matched.is_empty()) {
            matched.push(self.drift(m));
        }
        let mut alerts = self.alerts(f, &matched);
        if let Some(m) = &f.made {
            for a in alerts.iter_mut().filter(|a| a.rule.starts_with("notebook.drift_exec")) {
                self.writer_fields(a, &m.chain);
            }
        }
        incident(&mut alerts, table, f.e.meta.tgid, f.e.meta.ktime_ns);
        Outcome { alerts, role, server: (role == Role::Server).then_some(f.e.meta.tgid) }
    }

    /// False for a rule the policy's `rules.disabled` switches off. Enforcement is not a rule:
    /// a disabled rule's exec is still killed, its connect still refused, with no alert.
    fn enabled(&self, rule: &Rule) -> bool {
        !self.policy.rules.disabled.iter().any(|d| d == rule.name)
    }

    fn alerts(&self, f: &ExecFacts<'_>, fired: &[(Rule, String)]) -> Vec<Alert> {
        let action = if f.e.flags_killed() { Action::Killed } else { Action::Alert };
        fired
            .iter()
            .filter(|(r, _)| self.enabled(r))
            .map(|(rule, detail)| self.alert(rule, detail, f, action))
            .collect()
    }

    fn alert(&self, rule: &Rule, detail: &str, f: &ExecFacts<'_>, action: Action) -> Alert {
        let e = f.e;
        let r = &self.redactor;
        let mut a = Alert::new(rule, self.clock.rfc3339(e.meta.ktime_ns), &self.hostname, action);
        a.exec_fields(e, &f.argv, &f.exe_path, f.parent.as_ref(), r);
        a.notebook_fields(f.who, f.kernel.as_deref());
        if !detail.is_empty() {
            a.set("guard.detail", detail);
        }
        let mut summary = rule.summary.to_string();
        if !detail.is_empty() {
            summary.push_str(&format!(" ({detail})"));
        }
        a.finish_output(&summary);
        a
    }

    /// An alert not tied to an exec (agent health).
    pub fn health_alert(&self, rule: &Rule, summary: &str, fields: &[(&'static str, serde_json::Value)]) -> Alert {
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        let mut a = Alert::new(rule, now, &self.hostname, Action::Alert);
        a.set("evt.type", "guard");
        for (k, v) in fields {
            a.set(k, v.clone());
        }
        a.finish_output(summary);
        a
    }
}

trait ExecExt {
    fn flags_killed(&self) -> bool;
}

impl ExecExt for Exec {
    fn flags_killed(&self) -> bool {
        self.kernel_flags & exec_flags::KILLED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_rules_silence_network_and_drift_alerts_too() {
        use crate::discovery::attribution::{Attribution, Source};
        use crate::sensors::decode::{Egress, Meta, Socket};
        let meta = Meta { ktime_ns: 1, cpu: 0, pid: 1, tgid: 1, cgroup_id: 7 };
        let egress = Egress {
            meta: meta.clone(),
            addr: "192.0.2.1".parse().unwrap(),
            port: 443,
            protocol: "tcp".into(),
            denied: true,
            sendmsg: false,
            comm: "curl".into(),
            subject: 7,
            name: None,
        };
        let packet = Socket {
            meta,
            family: 17,
            sock_type: 3,
            protocol: 0,
            syscall: Some(41),
            denied: false,
            comm: "tcpdump".into(),
        };
        let who = Attribution::new(Source::Tljh, std::path::PathBuf::from("/sys/fs/cgroup/x"));
        let drift = crate::seccomp::drift::Drift {
            who: Arc::new(who.clone()),
            arch: crate::seccomp::arch::Arch::X86_64,
            syscall: "ptrace".into(),
            profile: "notebook.json".into(),
            verdict: "SCMP_ACT_ERRNO(1)".into(),
        };
        let table = ProcessTable::new();
        let detector = |yaml: &str| {
            let p = Policy::from_str("p.yaml", yaml).unwrap();
            Detector::new(Arc::new(p), None)
        };
        let mut on = detector("");
        assert_eq!(on.on_egress(&egress, &table, &who).len(), 1);
        assert_eq!(on.on_socket(&packet, &table, &who).len(), 1);
        assert!(on.seccomp_drift(&drift).is_some());
        let mut off = detector(
            "rules:\n  disabled: [notebook.unexpected_egress, notebook.packet_socket, notebook.seccomp_drift]\n",
        );
        assert!(off.on_egress(&egress, &table, &who).is_empty(), "a refused connect, with its rule off");
        assert!(off.on_socket(&packet, &table, &who).is_empty());
        assert!(off.seccomp_drift(&drift).is_none());
    }
}
