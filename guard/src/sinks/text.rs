//! Terminal output for people (`guard run --format text`, the default when stdout is a
//! terminal): one short line per alert — time, priority, rule, user and notebook, program and
//! command, parent, action — coloured by priority; `--events` adds one line per exec. Files
//! and pipes keep the JSON lines other tools read.

use std::io::{self, BufWriter, Stdout, Write};

use serde_json::Value;

use super::{events::ExecRecord, Sink};
use crate::{detect::alert::Alert, policy::rules::Priority};

/// Longest command shown; the JSON outputs carry the whole of it.
const CMD_MAX: usize = 100;

/// `s` with control characters (a hostile argv's terminal escapes) shown as `\xNN`, cut to
/// `max` characters.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn priority_name(p: Priority) -> (&'static str, &'static str) {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => ("CRIT", "1;31"),
        Priority::Error => ("ERROR", "31"),
        Priority::Warning => ("WARN", "33"),
        Priority::Notice => ("NOTICE", "36"),
        Priority::Informational => ("INFO", "2"),
        Priority::Debug => ("DEBUG", "2"),
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Time of day from an RFC 3339 time (`…T12:34:56.789Z` → `12:34:56`).
fn clock(time: &str) -> &str {
    time.split_once('T').map(|(_, t)| t.get(..8).unwrap_or(t)).unwrap_or(time)
}

/// One alert as one line.
pub fn alert_line(a: &Alert, color: bool) -> String {
    let f = |k: &str| text_of(a.output_fields.get(k));
    let (prio, code) = priority_name(a.priority);
    let who = match (f("jupyterhub.user"), f("notebook.path"), f("k8s.pod.name")) {
        (Some(u), Some(nb), _) => format!("{u}/{}", base(&nb)),
        (Some(u), None, _) => u,
        (None, _, Some(pod)) => pod,
        _ => "-".into(),
    };
    let what = match f("proc.cmdline").or_else(|| a.destination().map(|d| format!("connect {d}"))) {
        Some(c) => printable(&c, CMD_MAX),
        None => printable(&a.output, CMD_MAX),
    };
    let mut line = format!(
        "{} {} {} {} {what}",
        clock(&a.time),
        paint(&format!("{prio:<6}"), code, color),
        a.rule,
        printable(&who, 60)
    );
    if let Some(p) = f("proc.pexepath") {
        line.push_str(&format!("  ← {}", printable(base(&p), 40)));
    }
    match f("guard.action").as_deref() {
        Some("alert") | None => {}
        Some(act) => line.push_str(&format!("  [{}]", paint(act, "1", color))),
    }
    if let Some(n) = a.output_fields.get("guard.count").and_then(Value::as_u64) {
        line.push_str(&format!("  (×{} more)", n));
    }
    line
}

/// One exec (`--events`) as one line.
pub fn exec_line(r: &ExecRecord, color: bool) -> String {
    let cmd = printable(&r.argv.join(" "), CMD_MAX);
    let parent = r.parent.as_ref().and_then(|p| p.exe.as_deref()).map(base).unwrap_or("?");
    let killed = if r.killed { format!("  [{}]", paint("killed", "1", color)) } else { String::new() };
    format!(
        "{} {} pid={} uid={} {cmd}  ← {}{killed}",
        clock(&r.time),
        paint("exec  ", "2", color),
        r.pid,
        r.uid,
        printable(parent, 40)
    )
}

/// Alerts on stdout, as lines for people.
pub struct TextSink {
    w: BufWriter<Stdout>,
    color: bool,
}

impl TextSink {
    pub fn new(color: bool) -> Self {
        Self { w: BufWriter::new(io::stdout()), color }
    }
}

impl Sink for TextSink {
    fn name(&self) -> String {
        "stdout".into()
    }
    fn send(&mut self, alert: &Alert) -> io::Result<()> {
        writeln!(self.w, "{}", alert_line(alert, self.color))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{detect::alert::Action, policy::rules};

    #[test]
    fn an_alert_is_one_short_line_with_who_what_and_the_action() {
        let mut a = Alert::new(&rules::NON_PYTHON_EXEC, "2026-12-05T01:02:03.456Z".into(), "node", Action::Killed);
        a.set("proc.cmdline", "sh -c id\u{1b}[2J").set("proc.pexepath", "/opt/conda/bin/python3.11");
        a.set("jupyterhub.user", "alice").set("notebook.path", "/home/jovyan/work/analysis.ipynb");
        let line = alert_line(&a, false);
        assert_eq!(
            line,
            "01:02:03 WARN   notebook.non_python_exec alice/analysis.ipynb sh -c id\\x1b[2J  ← python3.11  [killed]"
        );
        assert!(!line.contains('\u{1b}'), "no terminal escape from an argv reaches the terminal");
        let colored = alert_line(&a, true);
        assert!(colored.contains("\x1b[33mWARN"), "{colored:?}");
        let long = "x".repeat(300);
        assert!(printable(&long, CMD_MAX).chars().count() == CMD_MAX + 1);
    }
}
