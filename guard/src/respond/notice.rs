//! Telling the notebook user why: when the kernel refuses something a notebook's kernel (or
//! what it started) tried — an exec killed, a connect or socket denied — one line goes to that
//! kernel's standard error, which ipykernel forwards into the running cell. The line names what
//! was refused, the rule, and whom to ask (policy `notice`).

use std::{
    collections::HashMap,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    detect::alert::Alert,
    enrich::MAX_CHAIN,
    policy::NoticeSpec,
    process::table::{ProcessTable, Role},
};

/// At most one line per kernel this often: a loop of refused calls gets one.
const EVERY: Duration = Duration::from_secs(2);

pub struct Notifier {
    proc_root: PathBuf,
    last: HashMap<u32, Instant>,
}

impl Notifier {
    pub fn new(proc_root: PathBuf) -> Self {
        Self { proc_root, last: HashMap::new() }
    }

    /// Tells the kernel above (or at) the refused process, for an alert whose action is a
    /// refusal; Ok(Some(kernel pid)) when a line was written. A kernel that is gone is not an
    /// error.
    pub fn refused(&mut self, alert: &Alert, table: &ProcessTable, spec: &NoticeSpec) -> std::io::Result<Option<u32>> {
        if !spec.enabled || !matches!(alert.field_str("guard.action"), Some("killed" | "denied")) {
            return Ok(None);
        }
        let Some(pid) = alert.output_fields.get("proc.pid").and_then(serde_json::Value::as_u64) else {
            return Ok(None);
        };
        let Some(kernel) = kernel_of(table, pid as u32) else { return Ok(None) };
        let now = Instant::now();
        if self.last.get(&kernel).is_some_and(|t| now.duration_since(*t) < EVERY) {
            return Ok(None);
        }
        if self.last.len() > 4096 {
            self.last.retain(|_, t| now.duration_since(*t) < EVERY);
        }
        let line = notice_line(alert, &spec.contact);
        let path = self.proc_root.join(kernel.to_string()).join("fd/2");
        // Non-blocking: a full pipe drops the line rather than stalling the pipeline.
        let mut f = match std::fs::OpenOptions::new().append(true).custom_flags(libc::O_NONBLOCK).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        f.write_all(line.as_bytes())?;
        self.last.insert(kernel, now);
        Ok(Some(kernel))
    }
}

/// The kernel a process serves: itself or its nearest ancestor whose exec made it a kernel;
/// for kernels seeded from /proc (running before the agent), the outermost process carrying
/// the kernel's context, which its descendants inherit.
fn kernel_of(table: &ProcessTable, pid: u32) -> Option<u32> {
    let mut outermost = None;
    for p in table.chain(pid, MAX_CHAIN) {
        if p.role == Role::Kernel {
            return Some(p.pid);
        }
        if p.kernel.is_some() {
            outermost = Some(p.pid);
        }
    }
    outermost
}

/// `[notebook-guard] Blocked: running `sh -c id` (notebook.non_python_exec). Ask …`
pub fn notice_line(alert: &Alert, contact: &str) -> String {
    let what = match alert.field_str("evt.type") {
        Some("execve") => format!("running `{}`", alert.field_str("proc.cmdline").unwrap_or("a program")),
        Some("connect") | Some("sendmsg") => {
            format!("connecting to {}", alert.destination().as_deref().unwrap_or("a destination"))
        }
        Some("socket") => format!("opening a {} socket", alert.field_str("fd.family").unwrap_or("raw")),
        _ => "this".to_string(),
    };
    // One line: a hostile command line must not forge others.
    let what: String = what.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    format!("\n[notebook-guard] Blocked by this hub's policy: {what} ({}). {contact}\n", alert.rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::alert::Action;
    use crate::policy::rules;

    #[test]
    fn the_line_says_what_was_blocked_by_which_rule_and_whom_to_ask() {
        let mut a = Alert::new(&rules::NON_PYTHON_EXEC, "t".into(), "h", Action::Killed);
        a.set("evt.type", "execve").set("proc.cmdline", "sh -c id\x1b[2J\nforged");
        let l = notice_line(&a, "Ask #help.");
        assert_eq!(
            l,
            "\n[notebook-guard] Blocked by this hub's policy: running `sh -c id [2J forged` (notebook.non_python_exec). Ask #help.\n"
        );
        let mut e = Alert::new(&rules::UNEXPECTED_EGRESS, "t".into(), "h", Action::Denied);
        e.set("evt.type", "connect").set("fd.name", "10.0.0.5:5432");
        assert!(notice_line(&e, "").contains("connecting to 10.0.0.5:5432 (notebook.unexpected_egress)"));
        // By the name the notebook looked it up by, when it did.
        e.set("fd.sip.name", "db.example.org");
        assert!(notice_line(&e, "").contains("connecting to db.example.org (10.0.0.5:5432) (notebook"));
    }
}
