//! Alerts on persistence locations written in a notebook: `notebook.persistence`, or for a
//! writer the policy knows for that kind of location (a package install writing a `.pth`),
//! nothing or `notebook.persistence_known_writer`, as the policy says. And drift: an exec of
//! a file made executable in the session, by a known installer or by anything else.

use std::path::Path;

use super::Detector;
use crate::{
    detect::alert::{one_line, Action, Alert},
    enrich::{persistence::Planted, written::Made},
    policy::{
        persistence::{KnownWriter, Report, EXECUTABLE},
        rules,
    },
    process::table::{cmdline, ProcInfo, Role},
};

/// Ancestors of the writer looked at for a known tool (pip's build backend, conda's
/// post-link script), the writer included.
const KNOWN_WRITER_DEPTH: usize = 4;

/// What a process runs, by the names a policy gives programs: its file name, and for an
/// interpreter, its script's name or `-m` module.
fn program_names(p: &ProcInfo) -> Vec<String> {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let argv: Vec<String> = p.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut names: Vec<String> = argv.first().map(|a| base(a)).into_iter().collect();
    names.extend(p.exe.as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()));
    if let Some(i) = argv.iter().position(|a| a == "-m") {
        names.extend(argv.get(i + 1).cloned());
    } else if let Some(script) = argv.get(1).filter(|a| !a.starts_with('-')) {
        names.push(base(script));
    }
    names
}

/// Does `w` describe process `p`: one of its programs, then its words in order.
fn is_writer(w: &KnownWriter, p: &ProcInfo) -> bool {
    let names = program_names(p);
    let named = w
        .programs
        .iter()
        .any(|g| globset::Glob::new(g).map(|g| g.compile_matcher()).is_ok_and(|m| names.iter().any(|n| m.is_match(n))));
    if !named {
        return false;
    }
    let mut words = p.argv.iter().skip(1).map(|a| a.to_string_lossy());
    w.args.iter().all(|want| words.any(|a| a == want.as_str()))
}

impl Detector {
    /// The drift rule for an exec of a file `m`'s writer made executable: a known installer
    /// (a writer whose `kinds` include `executable`) apart from anything else.
    pub(super) fn drift(&self, m: &Made) -> (rules::Rule, String) {
        let known = self.known_writer(EXECUTABLE, &m.chain);
        let writer = m.chain.first().map(|q| cmdline(&q.argv)).unwrap_or_else(|| "unknown".into());
        let writer = self.redactor.text(&writer).into_owned();
        match known {
            Some(w) => (rules::DRIFT_EXEC_INSTALLED, format!("installed by {} ({writer})", w.name)),
            None => (rules::DRIFT_EXEC, format!("made executable by {writer}")),
        }
    }

    /// The writer of a file, and its lineage.
    pub(super) fn writer_fields(&self, a: &mut Alert, chain: &[ProcInfo]) {
        let r = &self.redactor;
        a.set_opt("guard.writer.pid", chain.first().map(|q| q.pid))
            .set_opt(
                "guard.writer.exepath",
                chain.first().and_then(|q| q.exe.as_ref()).map(|e| e.to_string_lossy().into_owned()),
            )
            .set(
                "guard.writer.lineage",
                chain.iter().map(|q| r.text(&cmdline(&q.argv)).into_owned()).collect::<Vec<_>>(),
            );
    }

    /// The policy's known writer of `kind` in `chain` (writer first), if one is.
    fn known_writer(&self, kind: &str, chain: &[ProcInfo]) -> Option<&KnownWriter> {
        self.policy.persistence.known_writers.iter().find(|w| {
            w.kinds.iter().any(|k| k == kind)
                && chain
                    .iter()
                    .take(KNOWN_WRITER_DEPTH)
                    // The kernel and the server are never an install, whatever they are named.
                    .take_while(|q| !matches!(q.role, Role::Kernel | Role::Server))
                    .any(|q| is_writer(w, q))
        })
    }

    /// One planted location with its writer's chain (nearest first; empty when unknown).
    pub fn on_planted(&self, p: &Planted, chain: &[ProcInfo]) -> Option<Alert> {
        let known = self.known_writer(&p.kind, chain);
        let rule = match known.map(|w| w.report) {
            Some(Report::None) => return None,
            Some(Report::Info) => rules::PERSISTENCE_KNOWN_WRITER,
            None => rules::PERSISTENCE,
        };
        if !self.enabled(&rule) {
            return None;
        }
        let r = &self.redactor;
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        let mut a = Alert::new(&rule, now, &self.hostname, Action::Alert);
        let me = chain.first();
        let parent = chain.get(1);
        let path = p.path.to_string_lossy().into_owned();
        a.set("evt.type", p.op)
            .set("fd.name", path.clone())
            .set_opt("fd.directory", p.path.parent().map(|d| d.to_string_lossy().into_owned()))
            .set_opt("fd.filename", p.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .set_opt("fs.path.target", p.target.as_ref().map(|t| t.to_string_lossy().into_owned()))
            .set("guard.location", p.kind.clone())
            .set_opt("guard.known_writer", known.map(|w| w.name.clone()))
            .set_opt("proc.pid", p.pid)
            .set_opt("proc.exepath", me.and_then(|q| q.exe.as_ref()).map(|e| e.to_string_lossy().into_owned()))
            .set_opt("proc.cmdline", me.map(|q| r.text(&cmdline(&q.argv)).into_owned()))
            .set_opt("proc.pexepath", parent.and_then(|q| q.exe.as_ref()).map(|e| e.to_string_lossy().into_owned()))
            .set_opt("proc.pcmdline", parent.map(|q| r.text(&cmdline(&q.argv)).into_owned()))
            .set("proc.lineage", chain.iter().map(|q| r.text(&cmdline(&q.argv)).into_owned()).collect::<Vec<_>>());
        if p.pid.is_none() {
            a.set("guard.writer", "unknown");
        }
        let kernel = chain.iter().find_map(|q| q.kernel.clone());
        a.notebook_fields(&p.who, kernel.as_deref());
        a.finish_output(&format!("{} ({} {}, {})", rule.summary, p.kind, one_line(&path), p.op));
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{ffi::OsString, sync::Arc};

    fn proc(pid: u32, exe: &str, argv: &[&str], role: Role) -> ProcInfo {
        ProcInfo {
            pid,
            ppid: pid - 1,
            exe: Some(exe.into()),
            exe_id: None,
            argv: argv.iter().map(OsString::from).collect::<Vec<_>>().into(),
            comm: String::new(),
            cgroup_id: 1,
            role,
            kernel: None,
            notebook: None,
            incident: None,
        }
    }

    fn planted(kind: &str, path: &str) -> Planted {
        use crate::discovery::attribution::{Attribution, Source};
        Planted {
            who: Arc::new(Attribution::new(Source::Tljh, "/sys/fs/cgroup/x".into())),
            path: path.into(),
            kind: kind.into(),
            op: "create",
            target: None,
            pid: Some(10),
        }
    }

    #[test]
    fn installs_are_known_and_kernels_writing_startup_files_are_not() {
        let d = Detector::new(Arc::new(crate::policy::Policy::default_policy()), None);
        let kernel =
            proc(9, "/opt/conda/bin/python3", &["python", "-m", "ipykernel_launcher", "-f", "k.json"], Role::Kernel);
        let pip =
            proc(10, "/opt/conda/bin/python3", &["/opt/conda/bin/python3", "-m", "pip", "install", "x"], Role::Python);
        let pth = planted("site-hook", "/opt/conda/lib/python3.11/site-packages/x.pth");
        assert!(d.on_planted(&pth, &[pip.clone(), kernel.clone()]).is_none(), "pip install writing a .pth");
        let startup = planted("ipython-startup", "/home/jovyan/.ipython/profile_default/startup/00-x.py");
        let a = d.on_planted(&startup, &[pip, kernel.clone()]).expect("pip does not write startup files");
        assert_eq!(a.rule, "notebook.persistence");
        let a = d.on_planted(&pth, std::slice::from_ref(&kernel)).expect("the kernel writing a .pth");
        assert_eq!(a.rule, "notebook.persistence");
        assert_eq!(a.field_str("guard.location"), Some("site-hook"));
        assert!(a.output.contains("x.pth"), "{}", a.output);
        // `pip download` is not an install.
        let dl = proc(10, "/opt/conda/bin/pip", &["/opt/conda/bin/pip", "download", "x"], Role::Python);
        assert!(d.on_planted(&pth, &[dl, kernel.clone()]).is_some());
        let profile = proc(
            10,
            "/opt/conda/bin/python3",
            &["/opt/conda/bin/python3", "/opt/conda/bin/ipython", "profile", "create"],
            Role::Python,
        );
        let cfg = planted("ipython-config", "/home/jovyan/.ipython/profile_default/ipython_config.py");
        let a = d.on_planted(&cfg, &[profile, kernel]).expect("reported at info");
        assert_eq!(a.rule, "notebook.persistence_known_writer");
    }
}
