//! The detection engine: one exec, enriched with its notebook and lineage, against the policy.
//!
//! Python is decided by identity (the loaded file's device + inode), never by name. Benign
//! helpers are allowed by identity + parent + arguments. What is left is judged by the rules;
//! a generic "non-Python exec" fires only when no more specific rule did.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::alert::{Action, Alert};
use crate::{
    clock::BootClock,
    discovery::attribution::Attribution,
    policy::rules::{self, Rule},
    policy::{
        identity::{Identities, RootIdentities, RootKey, REFRESH_AFTER},
        ArgMatcher, Effective, Mode, Policy,
    },
    process::table::{cmdline, KernelCtx, ProcInfo, ProcessTable, Role},
    redact::Redactor,
    sensors::decode::{Exec, FileId},
};
use guard_abi::exec_flags;

mod incident;
mod judge;
mod network;

use incident::incident;
pub use judge::is_fileless;
use judge::{is_kernel_argv, is_server_argv};

/// Ancestors walked for lineage questions (is there Python above? a terminal?).
const MAX_CHAIN: usize = 32;
/// Largest binary read to look for a copy of a system binary.
const MAX_HASHED: u64 = 64 << 20;
/// File names remembered as interpreter-looking or not.
const INTERPRETER_MEMO: usize = 4096;

/// What one exec led to.
#[derive(Debug, Default)]
pub struct Outcome {
    pub alerts: Vec<Alert>,
    pub role: Role,
    /// A notebook server started (its tgid): terminals are shells whose parent is this.
    pub server: Option<u32>,
    /// The root whose identities the exec was judged against (for the kernel's allow-list).
    pub root: Option<RootKey>,
    /// The root's identities were resolved again (a new interpreter appeared): the kernel's
    /// allow-list needs them too.
    pub refreshed: bool,
    pub effective: Option<Effective>,
}

pub struct Detector {
    pub policy: Arc<Policy>,
    pub mode_flag: Option<Mode>,
    pub identities: Identities,
    helper_args: Vec<ArgMatcher>,
    /// `python.interpreters`, compiled once per policy: they are matched against unknown
    /// binaries on the exec path.
    interpreter_globs: globset::GlobSet,
    /// File names already matched against those globs: once identities are older than
    /// REFRESH_AFTER every exec of a non-Python binary asks, and the answer depends only on
    /// the name and the policy. Cleared when it reaches INTERPRETER_MEMO.
    interpreter_like: HashMap<PathBuf, bool>,
    hostname: String,
    clock: BootClock,
    proc_root: PathBuf,
    pub redactor: Redactor,
    /// exe identity → the system binary it is a copy of (None: not a copy).
    copies: crate::IdMap<FileId, Option<FileId>>,
}

/// Facts about an exec gathered once, used by every rule.
struct Facts<'a> {
    e: &'a Exec,
    who: &'a Attribution,
    exe_path: PathBuf,
    parent: Option<ProcInfo>,
    parent_is_python: bool,
    parent_role: Role,
    /// What the process was before this exec.
    prev_role: Role,
    python_ancestor: bool,
    in_terminal: bool,
    /// Under a command the policy names for sanctioned kernels.
    in_kernel_command: bool,
    kernel: Option<Arc<KernelCtx>>,
    argv: Vec<String>,
}

impl Detector {
    pub fn new(policy: Arc<Policy>, mode_flag: Option<Mode>, proc_root: PathBuf) -> Self {
        let helper_args = policy.helpers.iter().map(|h| ArgMatcher::new(&h.args)).collect();
        let interpreter_globs = interpreter_globs(&policy);
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        Self {
            policy,
            mode_flag,
            identities: Identities::default(),
            helper_args,
            interpreter_globs,
            interpreter_like: HashMap::new(),
            hostname,
            clock: BootClock::new(),
            proc_root,
            redactor: Redactor::new(),
            copies: Default::default(),
        }
    }

    /// Swaps the policy (reload). Identities are re-resolved lazily against it.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.helper_args = policy.helpers.iter().map(|h| ArgMatcher::new(&h.args)).collect();
        self.interpreter_globs = interpreter_globs(&policy);
        self.interpreter_like.clear();
        self.policy = policy;
        self.identities.clear();
        self.copies.clear();
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn root_identities(&mut self, cgroup_id: u64, pids: &[u32]) -> Option<(RootKey, &mut RootIdentities)> {
        self.identities.for_cgroup(cgroup_id, pids, &self.policy, &self.proc_root)
    }

    pub fn on_exec(&mut self, e: &Exec, table: &mut ProcessTable, who: Option<&Arc<Attribution>>) -> Outcome {
        table.ensure(&self.proc_root, e.ppid);
        // Known lineage: the parent runs in the same cgroup, or is init or a container runtime
        // starting the notebook. A process that entered from elsewhere (kubectl exec, nsenter)
        // is not.
        let lineage_known = table.get(e.ppid).is_some_and(|p| {
            p.pid == 1
                || p.cgroup_id == e.meta.cgroup_id
                || p.exe
                    .as_ref()
                    .and_then(|x| x.file_name())
                    .is_some_and(|n| self.policy.launchers.contains(&*n.to_string_lossy()))
                || self.policy.launchers.contains(&p.comm)
        });
        // What this process was before the exec: a shell that execs its last command in place
        // (`bash -c "a; b"`) hands its role to that command.
        let prev_role = table.get(e.meta.tgid).map(|p| p.role).unwrap_or_default();
        table.on_exec(e);
        let Some(who) = who else { return Outcome::default() };
        let eff = self.policy.effective(Some(who), self.mode_flag);
        let tgid = e.meta.tgid;
        let policy = self.policy.clone();

        // Identities of the notebook's root, refreshed once if an interpreter-looking binary
        // is unknown (a new conda env or venv).
        let pids = [tgid, e.ppid];
        let Some((root, ids)) = self.identities.for_cgroup(e.meta.cgroup_id, &pids, &policy, &self.proc_root) else {
            tracing::debug!(pid = tgid, "notebook root not readable; exec not judged");
            return Outcome { effective: Some(eff), ..Default::default() };
        };
        let mut is_python = ids.python.contains(&e.exe);
        let mut refreshed = false;
        if !is_python
            && ids.age() > REFRESH_AFTER
            && remembered(&mut self.interpreter_like, &e.filename, |p| {
                looks_like_interpreter(&self.interpreter_globs, p)
            })
        {
            if let Some(fresh) = self.identities.refresh(root, &policy) {
                is_python = fresh.python.contains(&e.exe);
                refreshed = true;
            }
        }
        let Some((_, ids)) = self.identities.for_cgroup(e.meta.cgroup_id, &pids, &policy, &self.proc_root) else {
            return Outcome::default();
        };

        // Read the ancestors in place; only the parent is kept (for the alert's fields).
        let chain = table.chain(e.ppid, MAX_CHAIN);
        // The notebook's interpreter: Python, or a sanctioned kernel of another language.
        let py = |p: &ProcInfo| p.exe_id.is_some_and(|id| ids.python.contains(&id)) || p.role == Role::Kernel;
        let parent = chain.first().map(|p| (*p).clone());
        let parent_is_python = parent.as_ref().is_some_and(py);
        let parent_role = parent.as_ref().map(|p| role_of(p, py(p))).unwrap_or_default();
        let python_ancestor = chain.iter().any(|p| py(p));
        let in_terminal = prev_role == Role::Terminal || chain.iter().any(|p| p.role == Role::Terminal);
        let in_kernel_command = prev_role == Role::KernelCommand || chain.iter().any(|p| p.role == Role::KernelCommand);
        let kernel = chain.iter().find_map(|p| p.kernel.clone());
        drop(chain);
        let argv: Vec<String> = e.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let exe_path = if e.filename.is_absolute() {
            e.filename.clone()
        } else {
            std::fs::read_link(self.proc_root.join(tgid.to_string()).join("exe")).unwrap_or(e.filename.clone())
        };
        let f = Facts {
            e,
            who,
            exe_path,
            parent,
            parent_is_python,
            parent_role,
            prev_role,
            python_ancestor,
            in_terminal,
            in_kernel_command,
            kernel: kernel.clone(),
            argv,
        };

        let mut out = Outcome { root: Some(root), refreshed, effective: Some(eff), ..Default::default() };
        let (role, mut matched) = self.judge(&f, is_python, &eff);
        // A miner is known by what its command line tells it, whatever runs it (a renamed
        // binary, Python running a miner module).
        if let Some(id) = super::mining::matches(&f.argv, &policy.mining_patterns) {
            matched.push((rules::CRYPTO_MINING, format!("pattern={id}")));
        }
        out.role = role;

        // Remember what this process is for its descendants.
        if let Some(p) = table.get_mut(tgid) {
            p.role = role;
            if role == Role::Kernel {
                let redactor = &mut self.redactor;
                let ctx = crate::process::kernel::read(&self.proc_root, tgid, &f.argv, &mut |env| {
                    redactor.learn_environ(env)
                });
                p.kernel = Some(Arc::new(ctx));
            }
        }
        if role == Role::Server {
            out.server = Some(tgid);
        }
        if !lineage_known {
            let mut m = matched;
            m.push((rules::UNKNOWN_LINEAGE, String::new()));
            out.alerts = self.alerts(&f, &m, &eff);
        } else {
            out.alerts = self.alerts(&f, &matched, &eff);
        }
        incident(&mut out.alerts, table, tgid, e.meta.ktime_ns);
        out
    }

    /// False for a rule the policy's `rules.disabled` switches off. Enforcement is not a rule:
    /// a disabled rule's exec is still killed, its connect still refused, with no alert.
    fn enabled(&self, rule: &Rule) -> bool {
        !self.policy.rules.disabled.iter().any(|d| d == rule.name)
    }

    fn alerts(&self, f: &Facts<'_>, fired: &[(Rule, String)], eff: &Effective) -> Vec<Alert> {
        let action = if f.e.flags_killed() { Action::Killed } else { Action::Alert };
        let _ = eff;
        fired
            .iter()
            .filter(|(r, _)| self.enabled(r))
            .map(|(rule, detail)| self.alert(rule, detail, f, action))
            .collect()
    }

    fn alert(&self, rule: &Rule, detail: &str, f: &Facts<'_>, action: Action) -> Alert {
        let e = f.e;
        let r = &self.redactor;
        let mut a = Alert::new(rule, self.clock.rfc3339(e.meta.ktime_ns), &self.hostname, action);
        let argv = r.argv(&f.argv);
        a.set("evt.type", "execve")
            .set("proc.pid", e.meta.tgid)
            .set("proc.ppid", e.ppid)
            .set("proc.name", e.comm.clone())
            .set("proc.exepath", r.text(&f.exe_path.to_string_lossy()).into_owned())
            .set("proc.cmdline", argv.join(" "))
            .set("proc.args", argv)
            .set("user.uid", e.uid)
            .set("proc.exe.dev", format!("{}:{}", libc::major(e.exe.dev), libc::minor(e.exe.dev)))
            .set("proc.exe.ino", e.exe.ino)
            .set_opt(
                "proc.pexepath",
                f.parent.as_ref().and_then(|p| p.exe.as_ref()).map(|p| p.to_string_lossy().into_owned()),
            )
            .set_opt("proc.pcmdline", f.parent.as_ref().map(|p| r.text(&cmdline(&p.argv)).into_owned()));
        notebook_fields(&mut a, f.who, f.kernel.as_deref());
        if !detail.is_empty() {
            a.set("guard.detail", detail);
        }
        if e.argv_truncated {
            a.set("proc.args_truncated", true);
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

/// Whose notebook: container, pod, JupyterHub user and server, and the kernel's notebook.
fn notebook_fields(a: &mut Alert, who: &Attribution, kernel: Option<&KernelCtx>) {
    a.set_opt("container.id", who.container_id.clone())
        .set_opt("k8s.ns.name", who.namespace.clone())
        .set_opt("k8s.pod.name", who.pod.clone())
        .set_opt("jupyterhub.user", who.user.clone())
        .set_opt("jupyterhub.server", who.server.clone())
        .set("jupyterhub.source", who.source.name())
        .set_opt("notebook.path", kernel.and_then(|k| k.notebook_path.clone()))
        .set_opt("notebook.kernel_id", kernel.and_then(|k| k.kernel_id.clone()))
        .set("container.cgroup", who.cgroup.to_string_lossy().into_owned());
    if who.cgroup_id != 0 {
        a.set("container.cgroup_id", who.cgroup_id);
    }
}

/// What a process is: the role its exec gave it, or for one seeded from /proc, what it runs.
pub fn role_of(p: &ProcInfo, is_python: bool) -> Role {
    if p.role != Role::Unknown {
        return p.role;
    }
    // Seeded from /proc: decide from what it runs.
    let argv: Vec<String> = p.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    match is_python {
        true if is_server_argv(&argv) => Role::Server,
        true if is_kernel_argv(&argv) => Role::Kernel,
        true => Role::Python,
        false => Role::Other,
    }
}

/// The policy's interpreter globs (validated when the policy was loaded).
fn interpreter_globs(policy: &Policy) -> globset::GlobSet {
    let mut set = globset::GlobSetBuilder::new();
    for g in policy.python.interpreters.iter().filter_map(|g| globset::Glob::new(g).ok()) {
        set.add(g);
    }
    set.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

/// `judge(path)`, remembered (a bounded memo).
fn remembered(memo: &mut HashMap<PathBuf, bool>, path: &Path, judge: impl FnOnce(&Path) -> bool) -> bool {
    if let Some(&v) = memo.get(path) {
        return v;
    }
    let v = judge(path);
    if memo.len() >= INTERPRETER_MEMO {
        memo.clear();
    }
    memo.insert(path.to_path_buf(), v);
    v
}

fn looks_like_interpreter(globs: &globset::GlobSet, path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"python")) || globs.is_match(path)
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
    use super::{judge::*, *};
    use std::path::Component;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn recognises_kernels_and_servers() {
        assert!(is_kernel_argv(&v(&["/opt/conda/bin/python3", "-m", "ipykernel_launcher", "-f", "/x/kernel-ab.json"])));
        assert!(!is_kernel_argv(&v(&["python", "/usr/lib/python3/dist-packages/ipykernel_launcher.py"])));
        assert!(is_server_argv(&v(&[
            "/opt/conda/bin/python3.11",
            "/opt/conda/bin/jupyterhub-singleuser",
            "--ip=0.0.0.0"
        ])));
        assert!(is_server_argv(&v(&["python", "-m", "jupyter_server"])));
        assert!(!is_server_argv(&v(&["python", "-c", "print('jupyter-lab')"])));
    }

    #[test]
    fn writable_prefixes_are_component_wise() {
        assert!(under(Path::new("/tmp/x"), "/tmp"));
        assert!(!under(Path::new("/tmpfoo/x"), "/tmp"));
        assert!(!under(Path::new("/tmp/../usr/bin/x"), "/tmp"));
        // The byte comparison agrees with `Path`'s component-wise one on every shape.
        let reference = |p: &str, pre: &str| {
            Path::new(p).starts_with(pre) && Path::new(p).components().all(|c| c != Component::ParentDir)
        };
        let paths = [
            "/tmp",
            "/tmp/",
            "/tmp/x",
            "/tmp//x",
            "/tmp/./x",
            "/tmp/.x",
            "/tmp/../x",
            "/tmpx",
            "/tm",
            "/",
            "/dev/shm/a",
            "/home/jovyan/.local/bin/x",
            "/home/jovyan/work/a/b",
            "x/tmp/y",
            "",
        ];
        let prefixes = ["/tmp", "/tmp/", "/", "/home/jovyan", "/home/jovyan/.local", "/dev/shm/"];
        for p in paths {
            for pre in prefixes {
                assert_eq!(under(Path::new(p), pre), reference(p, pre), "{p} under {pre}");
            }
        }
    }

    #[test]
    fn system_dirs_are_matched_as_paths() {
        for (p, want) in [
            ("/usr/bin/true", true),
            ("/bin/sh", true),
            ("/usr//bin/true", true),
            ("/usr/bin/./true", true),
            ("/usr/bin/x/true", false),
            ("/usr/binx/true", false),
            ("/opt/conda/bin/python", false),
            ("true", false),
            ("/", false),
        ] {
            assert_eq!(in_system_dir(Path::new(p)), want, "{p}");
        }
    }

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
        let who = Attribution::new(Source::Tljh, PathBuf::from("/sys/fs/cgroup/x"));
        let drift = crate::seccomp::drift::Drift {
            who: Arc::new(who.clone()),
            arch: crate::seccomp::arch::Arch::X86_64,
            syscall: "ptrace".into(),
            profile: "notebook.json".into(),
            verdict: "SCMP_ACT_ERRNO(1)".into(),
        };
        let mut table = ProcessTable::new();
        let detector = |yaml: &str| {
            let p = Policy::from_str("p.yaml", yaml).unwrap();
            Detector::new(Arc::new(p), None, PathBuf::from("/nonexistent"))
        };
        let mut on = detector("");
        assert_eq!(on.on_egress(&egress, &mut table, &who).len(), 1);
        assert_eq!(on.on_socket(&packet, &mut table, &who).len(), 1);
        assert!(on.seccomp_drift(&drift).is_some());
        let mut off = detector(
            "rules:\n  disabled: [notebook.unexpected_egress, notebook.packet_socket, notebook.seccomp_drift]\n",
        );
        assert!(off.on_egress(&egress, &mut table, &who).is_empty(), "a refused connect, with its rule off");
        assert!(off.on_socket(&packet, &mut table, &who).is_empty());
        assert!(off.seccomp_drift(&drift).is_none());
    }

    #[test]
    fn interpreter_globs_follow_the_policy_in_force() {
        let mut d = Detector::new(Arc::new(Policy::default_policy()), None, PathBuf::from("/proc"));
        let seen = |d: &Detector, p: &str| looks_like_interpreter(&d.interpreter_globs, Path::new(p));
        assert!(seen(&d, "/opt/conda/envs/torch/bin/python3.11"));
        assert!(seen(&d, "/home/jovyan/venv/bin/python"), "a python-named binary anywhere");
        assert!(!seen(&d, "/bin/true"));
        assert!(!seen(&d, "/opt/py/bin/interp"));
        // A reload compiles the new policy's globs.
        let reloaded =
            Policy::from_str("p.yaml", "python:\n  interpreters: [/opt/py/bin/interp*]\n").expect("valid policy");
        d.set_policy(Arc::new(reloaded));
        assert!(seen(&d, "/opt/py/bin/interp"));
        assert!(!seen(&d, "/opt/py/bin/other"));
    }
}
