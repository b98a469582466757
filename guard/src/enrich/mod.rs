//! Enrichment of one exec: everything its verdict needs, gathered once — the lineage (from
//! the process table, seeding from /proc what it does not know), the notebook root's
//! identities (one lookup; resolved again when an interpreter-looking binary is unknown), the
//! path of the image, and whether it is a copy of a system binary. The detector judges these
//! facts and reads nothing itself.

pub mod copies;
pub mod names;
pub mod paths;
pub mod persistence;
pub mod posture;
pub mod written;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    discovery::attribution::Attribution,
    policy::{
        identity::{Identities, RootIdentities, RootKey, REFRESH_AFTER},
        Policy,
    },
    process::{
        kernel::KernelCtx,
        roles::role_of,
        table::{ProcInfo, ProcessTable, Role},
    },
    sensors::decode::{Exec, FileId},
};

/// Ancestors walked for lineage questions (is there Python above? a terminal?).
pub const MAX_CHAIN: usize = 32;
/// File names remembered as interpreter-looking or not.
const INTERPRETER_MEMO: usize = 4096;

/// One exec in a notebook, with what is known about it.
pub struct ExecFacts<'a> {
    pub e: &'a Exec,
    pub who: &'a Attribution,
    /// The root the exec was judged against, and its identities.
    pub root: RootKey,
    pub ids: &'a mut RootIdentities,
    /// The image is one of the root's Python interpreters.
    pub is_python: bool,
    /// The root's identities were resolved again for this exec (a new interpreter appeared).
    pub refreshed: bool,
    /// The parent runs in the same cgroup, or is init or a container runtime starting the
    /// notebook; a process that entered from elsewhere (`kubectl exec`, nsenter) is not.
    pub lineage_known: bool,
    pub exe_path: PathBuf,
    /// The names the root's system directories give this image (not looked up for Python).
    pub system_names: Option<Arc<[String]>>,
    /// The system binary this image is a byte-identical copy of.
    pub copy_of: Option<FileId>,
    pub parent: Option<ProcInfo>,
    pub parent_is_python: bool,
    pub parent_role: Role,
    /// What the process was before this exec.
    pub prev_role: Role,
    pub python_ancestor: bool,
    pub in_terminal: bool,
    /// Under a command the policy names for sanctioned kernels.
    pub in_kernel_command: bool,
    pub kernel: Option<Arc<KernelCtx>>,
    pub argv: Vec<String>,
    /// The file was made executable during the session by a notebook process (drift).
    pub made: Option<written::Made>,
}

pub struct Enricher {
    pub identities: Identities,
    copies: copies::Copies,
    /// `python.interpreters`, compiled once per policy: they are matched against unknown
    /// binaries on the exec path.
    interpreter_globs: globset::GlobSet,
    /// File names already matched against those globs: once identities are older than
    /// REFRESH_AFTER every exec of a non-Python binary asks, and the answer depends only on
    /// the name and the policy. Cleared when it reaches INTERPRETER_MEMO.
    interpreter_like: HashMap<PathBuf, bool>,
    proc_root: PathBuf,
}

impl Enricher {
    pub fn new(policy: &Policy, proc_root: PathBuf) -> Self {
        Self {
            identities: Identities::default(),
            copies: Default::default(),
            interpreter_globs: interpreter_globs(policy),
            interpreter_like: HashMap::new(),
            proc_root,
        }
    }

    /// A new policy: identities are resolved again, lazily, against it.
    pub fn set_policy(&mut self, policy: &Policy) {
        self.interpreter_globs = interpreter_globs(policy);
        self.interpreter_like.clear();
        self.identities.clear();
        self.copies.clear();
    }

    pub fn root_identities(
        &mut self,
        cgroup_id: u64,
        pids: &[u32],
        policy: &Policy,
    ) -> Option<(RootKey, &mut RootIdentities)> {
        self.identities.for_cgroup(cgroup_id, pids, policy, &self.proc_root)
    }

    /// The lineage bookkeeping every exec needs (in a notebook or not), then — for an exec in
    /// notebook `who` whose root can be read — its facts.
    pub fn exec<'a>(
        &'a mut self,
        e: &'a Exec,
        table: &mut ProcessTable,
        who: Option<&'a Attribution>,
        policy: &Policy,
    ) -> Option<ExecFacts<'a>> {
        table.ensure(&self.proc_root, e.ppid);
        let lineage_known = table.get(e.ppid).is_some_and(|p| {
            p.pid == 1
                || p.cgroup_id == e.meta.cgroup_id
                || p.exe
                    .as_ref()
                    .and_then(|x| x.file_name())
                    .is_some_and(|n| policy.launchers.contains(&*n.to_string_lossy()))
                || policy.launchers.contains(&p.comm)
        });
        // A shell that execs its last command in place (`bash -c "a; b"`) hands its role on.
        let prev_role = table.get(e.meta.tgid).map(|p| p.role).unwrap_or_default();
        table.on_exec(e);
        let who = who?;

        let tgid = e.meta.tgid;
        let Some((root, ids)) = self.identities.for_cgroup(e.meta.cgroup_id, &[tgid, e.ppid], policy, &self.proc_root)
        else {
            tracing::debug!(pid = tgid, "notebook root not readable; exec not judged");
            return None;
        };
        let mut is_python = ids.python.contains(&e.exe);
        let stale = !is_python
            && ids.age() > REFRESH_AFTER
            && remembered(&mut self.interpreter_like, &e.filename, |p| {
                looks_like_interpreter(&self.interpreter_globs, p)
            });
        let mut refreshed = false;
        if stale {
            if let Some(fresh) = self.identities.refresh(root, policy) {
                is_python = fresh.python.contains(&e.exe);
                refreshed = true;
            }
        }
        let ids = self.identities.get_mut(root)?;

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
        let system_names = if is_python { None } else { ids.system_names(&e.exe) };
        let copy_of =
            if !is_python && system_names.is_none() && !paths::in_system_dir(&exe_path) && !paths::is_fileless(e) {
                self.copies.copy_of(e, &exe_path, ids, &self.proc_root)
            } else {
                None
            };
        Some(ExecFacts {
            e,
            who,
            root,
            ids,
            is_python,
            refreshed,
            lineage_known,
            exe_path,
            system_names,
            copy_of,
            parent,
            parent_is_python,
            parent_role,
            prev_role,
            python_ancestor,
            in_terminal,
            in_kernel_command,
            kernel,
            argv,
            made: None,
        })
    }

    /// After the verdict: what the process now is, for its descendants — its role, and for a
    /// kernel the notebook it serves (its environment goes to `learn`, whose secrets are then
    /// masked wherever they show up).
    pub fn settle(&self, e: &Exec, role: Role, table: &mut ProcessTable, learn: &mut dyn FnMut(&[u8])) {
        let Some(p) = table.get_mut(e.meta.tgid) else { return };
        p.role = role;
        if role == Role::Kernel {
            let argv: Vec<String> = e.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            p.kernel = Some(Arc::new(crate::process::kernel::read(&self.proc_root, e.meta.tgid, &argv, learn)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_globs_follow_the_policy_in_force() {
        let mut d = Enricher::new(&Policy::default_policy(), PathBuf::from("/proc"));
        let seen = |d: &Enricher, p: &str| looks_like_interpreter(&d.interpreter_globs, Path::new(p));
        assert!(seen(&d, "/opt/conda/envs/torch/bin/python3.11"));
        assert!(seen(&d, "/home/jovyan/venv/bin/python"), "a python-named binary anywhere");
        assert!(!seen(&d, "/bin/true"));
        assert!(!seen(&d, "/opt/py/bin/interp"));
        // A reload compiles the new policy's globs.
        let reloaded =
            Policy::from_str("p.yaml", "python:\n  interpreters: [/opt/py/bin/interp*]\n").expect("valid policy");
        d.set_policy(&reloaded);
        assert!(seen(&d, "/opt/py/bin/interp"));
        assert!(!seen(&d, "/opt/py/bin/other"));
    }
}
