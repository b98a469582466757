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
}

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
        Self { window, open: HashMap::new() }
    }

    /// Some(alert) to send now, or None when it is a repeat being counted.
    pub fn admit(&mut self, alert: Alert, now: Instant) -> Option<Alert> {
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
        out
    }

    pub fn pending(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{alert::Action, rules::NON_PYTHON_EXEC};

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
