//! Bursts of identical alerts are aggregated, never dropped silently: the first goes out at
//! once, repeats within the window are counted, and one summary alert with `guard.count`
//! follows when the window closes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::alert::Alert;

pub struct Aggregator {
    window: Duration,
    open: HashMap<String, (Instant, u64, Alert)>,
    /// Folded alerts per incident: (first seen, how many, their commands, the last one).
    incidents: HashMap<String, (Instant, u64, Vec<String>, Alert)>,
}

/// Commands listed in an incident's follow-up (the count says how many there were).
const CHAIN_MAX: usize = 16;

/// What makes two alerts the same: the rule and the fields below, each as JSON (so that
/// null and "" differ), separated by a character no JSON text holds unescaped. The cgroup's
/// id tells incarnations of one path apart (a server restarted at once reports on its own);
/// user, server and kernel tell apart notebooks that share a cgroup (LocalProcessSpawner).
fn key(a: &Alert) -> String {
    use std::fmt::Write;
    let mut k = String::with_capacity(256);
    k.push_str(a.rule);
    for field in [
        "container.cgroup",
        "container.cgroup_id",
        "jupyterhub.user",
        "jupyterhub.server",
        "notebook.kernel_id",
        "proc.exepath",
        "proc.cmdline",
        "fd.name",
        "fd.family",
        "syscall.type",
        "guard.action",
    ] {
        k.push('\u{1f}');
        if let Some(v) = a.output_fields.get(field) {
            // Writing to a String cannot fail.
            let _ = write!(k, "{v}");
        }
    }
    k
}

impl Aggregator {
    pub fn new(window: Duration) -> Self {
        Self { window, open: HashMap::new(), incidents: HashMap::new() }
    }

    /// Some(alert) to send now, or None when it is a repeat being counted or part of an
    /// incident already alerted (`Alert::folded`).
    pub fn admit(&mut self, alert: Alert, now: Instant) -> Option<Alert> {
        if alert.folded {
            let mut k = alert.rule.to_string();
            for field in ["container.cgroup_id", "guard.incident"] {
                k.push('\u{1f}');
                k.push_str(&alert.output_fields.get(field).map(|v| v.to_string()).unwrap_or_default());
            }
            let cmd = alert.output_fields.get("proc.cmdline").and_then(|v| v.as_str()).unwrap_or("").to_string();
            let entry = self.incidents.entry(k).or_insert_with(|| (now, 0, Vec::new(), alert.clone()));
            entry.1 += 1;
            if entry.2.len() < CHAIN_MAX {
                entry.2.push(cmd);
            }
            entry.3 = alert;
            return None;
        }
        let k = key(&alert);
        if let Some((_, count, last)) = self.open.get_mut(&k) {
            *count += 1;
            *last = alert;
            return None;
        }
        self.open.insert(k, (now, 0, alert.clone()));
        Some(alert)
    }

    /// Summaries for windows that closed (only those that saw repeats).
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<Alert> {
        let mut out = Vec::new();
        self.open.retain(|_, (start, count, last)| {
            if !all && now.duration_since(*start) < self.window {
                return true;
            }
            if *count > 0 {
                let mut a = last.clone();
                a.set("guard.count", *count);
                let summary = a.output.split(" user=").next().unwrap_or("").to_string();
                let base = summary.trim_end();
                a.output = a.output.replacen(base, &format!("{base} [repeated {count} more times]"), 1);
                out.push(a);
            }
            false
        });
        self.incidents.retain(|_, (start, count, chain, last)| {
            if !all && now.duration_since(*start) < self.window {
                return true;
            }
            let mut a = last.clone();
            a.folded = false;
            a.set("guard.count", *count).set("guard.chain", chain.clone());
            let summary = a.output.split(" user=").next().unwrap_or("").to_string();
            let base = summary.trim_end();
            let note = format!("{base} [{count} more command(s) of the same incident: {}]", chain.join("; "));
            a.output = a.output.replacen(base, &note, 1);
            out.push(a);
            false
        });
        out
    }

    pub fn pending(&self) -> usize {
        self.open.len() + self.incidents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::alert::Action, policy::rules::NON_PYTHON_EXEC};

    fn alert(cmd: &str) -> Alert {
        let mut a = Alert::new(&NON_PYTHON_EXEC, "t".into(), "h", Action::Alert);
        a.set("proc.cmdline", cmd);
        a.finish_output(NON_PYTHON_EXEC.summary);
        a
    }

    #[test]
    fn repeats_are_counted_and_summarised() {
        let mut g = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(g.admit(alert("id"), t0).is_some());
        for _ in 0..4 {
            assert!(g.admit(alert("id"), t0).is_none());
        }
        assert!(g.admit(alert("whoami"), t0).is_some());
        assert!(g.flush(t0 + Duration::from_secs(1), false).is_empty());
        let out = g.flush(t0 + Duration::from_secs(11), false);
        assert_eq!(out.len(), 1, "only the repeated alert is summarised");
        assert_eq!(out[0].output_fields["guard.count"], 4);
        assert!(out[0].output.contains("[repeated 4 more times]"), "{}", out[0].output);
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn an_incident_is_one_alert_and_one_follow_up_with_its_chain() {
        let mut g = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut first = alert("sh -c id; whoami");
        first.set("guard.incident", 42);
        assert!(g.admit(first, t0).is_some(), "the flagged shell goes out at once");
        for cmd in ["id", "whoami"] {
            let mut a = alert(cmd);
            a.set("guard.incident", 42);
            a.folded = true;
            assert!(g.admit(a, t0).is_none(), "what it ran is folded");
        }
        let out = g.flush(t0 + Duration::from_secs(11), false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].output_fields["guard.count"], 2);
        assert_eq!(out[0].output_fields["guard.chain"], serde_json::json!(["id", "whoami"]));
        assert!(out[0].output.contains("2 more command(s) of the same incident: id; whoami"), "{}", out[0].output);
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn notebooks_sharing_a_cgroup_and_incarnations_of_one_are_not_folded_together() {
        let mut g = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let of = |user: &str, server: &str, cgroup_id: u64| {
            let mut a = alert("sh -c id");
            a.set("container.cgroup", "/system.slice/jupyterhub.service")
                .set("container.cgroup_id", cgroup_id)
                .set("jupyterhub.user", user)
                .set("jupyterhub.server", server);
            a
        };
        assert!(g.admit(of("alice", "", 7), t0).is_some());
        assert!(g.admit(of("alice", "gpu", 7), t0).is_some(), "a named server next to the default one");
        assert!(g.admit(of("bob", "", 7), t0).is_some(), "another user in the hub's cgroup");
        assert!(g.admit(of("alice", "", 8), t0).is_some(), "the next incarnation of a restarted unit");
        assert!(g.admit(of("alice", "", 7), t0).is_none(), "a true repeat is counted");
    }
}
