//! The alert format: Falco-compatible JSON (a contract — other tools and tests rely on it).
//! `output_fields` always carries the same keys, `null` where a value is unknown.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use std::path::Path;

use crate::{
    discovery::attribution::Attribution,
    policy::rules::{Priority, Rule},
    process::table::{cmdline, KernelCtx, ProcInfo},
    redact::Redactor,
    sensors::decode::Exec,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Alert,
    Killed,
    Denied,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Killed => "killed",
            Action::Denied => "denied",
        }
    }
}

/// Keys every alert's `output_fields` has.
pub const FIELDS: &[&str] = &[
    "evt.type",
    "proc.pid",
    "proc.exepath",
    "proc.cmdline",
    "proc.pexepath",
    "proc.pcmdline",
    "user.uid",
    "container.id",
    "k8s.ns.name",
    "k8s.pod.name",
    "jupyterhub.user",
    "jupyterhub.server",
    "notebook.path",
    "guard.action",
];

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    pub time: String,
    // What is fixed per rule is borrowed, not copied: an alert is built for every judged
    // exec, repeats that the aggregator only counts included, and each owned name, tag and
    // field key was an allocation.
    pub rule: &'static str,
    pub priority: Priority,
    pub source: &'static str,
    pub hostname: String,
    pub output: String,
    pub tags: &'static [&'static str],
    pub output_fields: BTreeMap<&'static str, Value>,
    /// Part of an incident already alerted (what a flagged shell ran): counted into that
    /// incident's follow-up, not sent on its own.
    #[serde(skip)]
    pub folded: bool,
}

impl Alert {
    /// An alert with every standard field present (null) and `guard.action` set.
    pub fn new(rule: &Rule, time: String, hostname: &str, action: Action) -> Self {
        let mut output_fields: BTreeMap<&'static str, Value> = FIELDS.iter().map(|&k| (k, Value::Null)).collect();
        output_fields.insert("guard.action", Value::from(action.name()));
        Self {
            time,
            rule: rule.name,
            priority: rule.priority,
            source: "syscall",
            hostname: hostname.to_string(),
            output: rule.summary.to_string(),
            tags: rule.tags,
            output_fields,
            folded: false,
        }
    }

    pub fn set(&mut self, key: &'static str, v: impl Into<Value>) -> &mut Self {
        self.output_fields.insert(key, v.into());
        self
    }

    pub fn set_opt<T: Into<Value>>(&mut self, key: &'static str, v: Option<T>) -> &mut Self {
        self.output_fields.insert(key, v.map(Into::into).unwrap_or(Value::Null));
        self
    }

    pub fn field_str(&self, key: &str) -> Option<&str> {
        self.output_fields.get(key).and_then(Value::as_str)
    }

    /// An exec's Falco fields: the process, its image, its arguments (secrets masked by
    /// `redactor`) and its parent.
    pub fn exec_fields(
        &mut self,
        e: &Exec,
        argv: &[String],
        exe_path: &Path,
        parent: Option<&ProcInfo>,
        redactor: &Redactor,
    ) -> &mut Self {
        let r = redactor;
        let argv = r.argv(argv);
        self.set("evt.type", "execve")
            .set("proc.pid", e.meta.tgid)
            .set("proc.ppid", e.ppid)
            .set("proc.name", e.comm.clone())
            .set("proc.exepath", r.text(&exe_path.to_string_lossy()).into_owned())
            .set("proc.cmdline", argv.join(" "))
            .set("proc.args", argv)
            .set("user.uid", e.uid)
            .set("proc.exe.dev", format!("{}:{}", libc::major(e.exe.dev), libc::minor(e.exe.dev)))
            .set("proc.exe.ino", e.exe.ino)
            .set_opt("proc.pexepath", parent.and_then(|p| p.exe.as_ref()).map(|p| p.to_string_lossy().into_owned()))
            .set_opt("proc.pcmdline", parent.map(|p| r.text(&cmdline(&p.argv)).into_owned()));
        if e.argv_truncated {
            self.set("proc.args_truncated", true);
        }
        self
    }

    /// Whose notebook: container, pod, JupyterHub user and server, and the kernel's notebook.
    pub fn notebook_fields(&mut self, who: &Attribution, kernel: Option<&KernelCtx>) -> &mut Self {
        self.set_opt("container.id", who.container_id.clone())
            .set_opt("k8s.ns.name", who.namespace.clone())
            .set_opt("k8s.pod.name", who.pod.clone())
            .set_opt("jupyterhub.user", who.user.clone())
            .set_opt("jupyterhub.server", who.server.clone())
            .set("jupyterhub.source", who.source.name())
            .set_opt("notebook.path", kernel.and_then(|k| k.notebook_path.clone()))
            .set_opt("notebook.kernel_id", kernel.and_then(|k| k.kernel_id.clone()))
            .set("container.cgroup", who.cgroup.to_string_lossy().into_owned());
        if who.cgroup_id != 0 {
            self.set("container.cgroup_id", who.cgroup_id);
        }
        self
    }

    /// Builds `output`: the rule's sentence, then `key=value` for the fields a reader needs
    /// first. One line whatever the values hold.
    /// `fd.name` as people read it: a destination with the name the notebook resolved it by
    /// (`evil.example.org (198.51.100.8:443)`), else as it is.
    pub fn destination(&self) -> Option<String> {
        let addr = self.field_str("fd.name")?;
        Some(match self.field_str("fd.sip.name") {
            Some(n) => format!("{n} ({addr})"),
            None => addr.to_string(),
        })
    }

    pub fn finish_output(&mut self, summary: &str) {
        let mut out = summary.to_string();
        for (label, key) in [
            ("user", "jupyterhub.user"),
            ("pod", "k8s.pod.name"),
            ("ns", "k8s.ns.name"),
            ("notebook", "notebook.path"),
            ("exe", "proc.exepath"),
            ("cmdline", "proc.cmdline"),
            ("parent", "proc.pexepath"),
            ("pcmdline", "proc.pcmdline"),
            (
                if self.output_fields.get("guard.location").is_some_and(|v| !v.is_null()) { "file" } else { "dest" },
                "fd.name",
            ),
            ("action", "guard.action"),
            ("count", "guard.count"),
        ] {
            match self.output_fields.get(key) {
                Some(Value::String(_)) if key == "fd.name" => {
                    out.push_str(&format!(" {label}={}", one_line(&self.destination().unwrap_or_default())))
                }
                Some(Value::String(s)) => out.push_str(&format!(" {label}={}", one_line(s))),
                Some(Value::Number(n)) => out.push_str(&format!(" {label}={n}")),
                _ => {}
            }
        }
        self.output = out;
    }
}

/// Control characters (newlines, escapes) shown as `\xNN`, so one alert is one line on any
/// terminal or text sink.
pub fn one_line(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            o.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            o.push(c);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rules::NON_PYTHON_EXEC;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hostile_values_stay_one_json_line_and_round_trip(cmd in any::<String>(), exe in any::<String>(), user in any::<String>()) {
            let mut a = Alert::new(&NON_PYTHON_EXEC, "t".into(), "h", Action::Alert);
            a.set("proc.cmdline", cmd.clone()).set("proc.exepath", exe).set("jupyterhub.user", user);
            a.finish_output(NON_PYTHON_EXEC.summary);
            prop_assert!(!a.output.chars().any(|c| c.is_control()));
            let line = serde_json::to_string(&a).unwrap();
            let clean = !line.contains('\n') && !line.contains('\r') && !line.contains('\x1b');
            prop_assert!(clean);
            let back: Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(back["output_fields"]["proc.cmdline"].as_str().unwrap(), cmd.as_str());
        }
    }

    #[test]
    fn every_field_is_present_and_output_is_one_line() {
        let mut a = Alert::new(&NON_PYTHON_EXEC, "2026-01-01T00:00:00.000000000Z".into(), "node-1", Action::Killed);
        for k in FIELDS {
            assert!(a.output_fields.contains_key(*k), "{k}");
        }
        a.set("proc.cmdline", "sh -c 'id\n\x1b[31mred'");
        a.finish_output(NON_PYTHON_EXEC.summary);
        assert!(!a.output.contains('\n') && !a.output.contains('\x1b'));
        assert!(a.output.contains("action=killed"), "{}", a.output);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["priority"], "Warning");
        assert_eq!(json["source"], "syscall");
        assert_eq!(json["output_fields"]["k8s.pod.name"], Value::Null);
    }
}
