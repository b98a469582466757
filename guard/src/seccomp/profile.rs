//! Seccomp profiles in the OCI runtime-spec form (`linux.seccomp`, also kubelet's
//! `localhost` profile files), and how one is generated from recordings.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    arch::Arch,
    docker,
    oci::{OciProfile, OciRule, ACT_ALLOW, ACT_ERRNO, ENOSYS, EPERM},
    recording::Coverage,
};

/// Syscalls the OCI runtime itself makes between loading the filter and the container's
/// first instruction (runc and crun load the profile, then finish set-up and exec), and the
/// minimum any process needs to start and end. A recording made inside a running container
/// never sees these, so they are added to every profile.
pub const RUNTIME_NEEDS: &[&str] = &[
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "rt_sigreturn",
    // The kernel's own resumption of a sleep (nanosleep, poll, a futex wait with a timeout)
    // that a stop interrupted: a recording sees it only if a stop happened to land mid-sleep.
    "restart_syscall",
    "rt_sigaction",
    "rt_sigprocmask",
    "sigaltstack",
    "futex",
    "nanosleep",
    "clock_nanosleep",
    "sched_yield",
    "getpid",
    "gettid",
    "tgkill",
    "read",
    "write",
    "close",
    "close_range",
    "fstat",
    "newfstatat",
    "fcntl",
    "dup3",
    "openat",
    "capget",
    "capset",
    "prctl",
    "setgroups",
    "setuid",
    "setgid",
    "setresuid",
    "setresgid",
    "brk",
    "mmap",
    "munmap",
    "mprotect",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "epoll_pwait",
    "epoll_ctl",
    "getdents64",
    "chdir",
    "fchdir",
    "fstatfs",
    "statfs",
];

/// Newer calls that glibc and CPython probe and fall back from when the kernel says ENOSYS
/// (but not when it says EPERM). When not recorded they answer ENOSYS instead of EPERM.
pub const ENOSYS_FALLBACKS: &[&str] = &[
    "clone3",
    "openat2",
    "faccessat2",
    "fchmodat2",
    "statx",
    "close_range",
    "epoll_pwait2",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "futex_waitv",
    "rseq",
    "copy_file_range",
    "getrandom",
    "memfd_create",
    "preadv2",
    "pwritev2",
    "mount_setattr",
    "landlock_create_ruleset",
];

/// Newer calls and the older ones their callers fall back to on ENOSYS. When a newer call is
/// recorded but answers ENOSYS in the profile (`clone3`, as under Docker), its fallback must be
/// allowed even if the recording never saw it.
pub const FALLBACK_OF: &[(&str, &str)] = &[
    ("clone3", "clone"),
    ("openat2", "openat"),
    ("faccessat2", "faccessat"),
    ("fchmodat2", "fchmodat"),
    ("statx", "newfstatat"),
    ("epoll_pwait2", "epoll_pwait"),
    ("close_range", "close"),
];

/// What `generate` was asked for.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Keep a syscall only if at least this many recordings used it (1: the union).
    pub min_coverage: usize,
    /// Calls to allow even though Docker's default profile refuses them (explicit, reviewed).
    pub beyond_docker: BTreeSet<String>,
    /// Errno for everything not allowed.
    pub default_errno: u32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { min_coverage: 1, beyond_docker: BTreeSet::new(), default_errno: EPERM }
    }
}

/// A generated profile and what generation decided along the way.
#[derive(Debug)]
pub struct Generated {
    pub profile: OciProfile,
    /// Recorded calls left out because Docker's default profile refuses them.
    pub refused_by_docker: BTreeSet<String>,
    /// Recorded numbers libseccomp has no name for (cannot be written into a profile).
    pub unnamed: BTreeMap<Arch, BTreeSet<u32>>,
    /// Calls below `min_coverage`, left out.
    pub below_coverage: BTreeSet<String>,
}

/// Builds a profile: allow what was recorded (per architecture, names checked against
/// libseccomp), plus the runtime's needs; never more than Docker's default allows; ENOSYS for
/// unrecorded newer calls with fallbacks; the rest fails with `default_errno`.
pub fn generate(cov: &Coverage, opts: &GenerateOptions) -> Generated {
    let mut refused = BTreeSet::new();
    let mut below = BTreeSet::new();
    // One rule list for all architectures (OCI profiles are written that way); a name is
    // included when some recorded architecture used it. Per-arch resolution happens in the
    // runtime, which skips names an architecture lacks.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for names in cov.syscalls.values() {
        for (name, count) in names {
            if *count < opts.min_coverage {
                below.insert(name.clone());
            } else {
                wanted.insert(name.clone());
            }
        }
    }
    below.retain(|n| !wanted.contains(n));
    wanted.extend(RUNTIME_NEEDS.iter().map(|s| s.to_string()));
    // A recorded call that will answer ENOSYS (Docker's rule for clone3) brings its fallback.
    for (newer, older) in FALLBACK_OF {
        let answers_enosys = !opts.beyond_docker.contains(*newer) && !docker::permits(newer);
        if wanted.contains(*newer) && answers_enosys {
            wanted.remove(*newer);
            wanted.insert(older.to_string());
        }
    }

    let mut outright = BTreeSet::new();
    let mut conditional = BTreeSet::new();
    for name in wanted {
        if opts.beyond_docker.contains(&name) || docker::allows_outright(&name) {
            outright.insert(name);
        } else if docker::is_conditional(&name) {
            conditional.insert(name);
        } else {
            refused.insert(name);
        }
    }
    let mut rules = vec![OciRule::allow(outright.iter().cloned().collect())];
    for name in &conditional {
        rules.extend(docker::conditional_rules(name));
    }
    let fallbacks: Vec<String> = ENOSYS_FALLBACKS
        .iter()
        .filter(|n| !outright.contains(**n) && !conditional.contains(**n))
        .map(|s| s.to_string())
        .collect();
    if !fallbacks.is_empty() {
        rules.push(OciRule::errno(fallbacks, ENOSYS));
    }
    // Every architecture the recordings saw, and always the node's native one.
    let mut arches: BTreeSet<Arch> = cov.syscalls.keys().copied().collect();
    arches.insert(Arch::X86_64);
    let profile = OciProfile {
        default_action: ACT_ERRNO.into(),
        default_errno_ret: Some(opts.default_errno),
        architectures: arches.iter().map(|a| a.oci_name().to_string()).collect(),
        flags: vec![],
        listener_path: None,
        listener_metadata: None,
        syscalls: rules,
    };
    Generated { profile, refused_by_docker: refused, unnamed: cov.unnamed.clone(), below_coverage: below }
}

/// Problems that make a profile unsafe to hand to a runtime: unknown architectures, actions,
/// comparison operators, and names no listed architecture knows (runc would drop them
/// silently). Each message names the rule.
pub fn validate(p: &OciProfile) -> Vec<String> {
    let mut errs = Vec::new();
    let arches: Vec<Arch> = p
        .architectures
        .iter()
        .filter_map(|a| {
            let r = Arch::from_oci_name(a);
            if r.is_none() {
                errs.push(format!("architectures: {a:?} is not an x86 architecture this guard knows"));
            }
            r
        })
        .collect();
    if let Err(e) = super::apply::action(&p.default_action, p.default_errno_ret) {
        errs.push(format!("defaultAction: {e}"));
    }
    let check_arches = if arches.is_empty() { vec![Arch::X86_64] } else { arches };
    for (i, r) in p.syscalls.iter().enumerate() {
        if let Err(e) = super::apply::action(&r.action, r.errno_ret) {
            errs.push(format!("syscalls[{i}].action: {e}"));
        }
        for (j, a) in r.args.iter().enumerate() {
            if let Err(e) = super::apply::compare(a) {
                errs.push(format!("syscalls[{i}].args[{j}]: {e}"));
            }
        }
        for n in &r.names {
            if !check_arches.iter().any(|a| a.knows(n)) {
                errs.push(format!("syscalls[{i}].names: {n:?} is not a syscall libseccomp knows for {check_arches:?}"));
            }
        }
    }
    errs
}

/// The allowed names of a profile (any rule whose action is ALLOW), for diffs and drift.
pub fn allowed_names(p: &OciProfile) -> BTreeSet<String> {
    p.syscalls.iter().filter(|r| r.action == ACT_ALLOW).flat_map(|r| r.names.iter().cloned()).collect()
}

/// A Security Profiles Operator `SeccompProfile` carrying the same rules. SPO serves it as
/// `v1beta1` (namespaced), and its schema types `errnoRet` as a string.
pub fn to_spo(p: &OciProfile, name: &str, namespace: &str) -> serde_json::Value {
    let syscalls: Vec<serde_json::Value> = p
        .syscalls
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({ "names": r.names, "action": r.action });
            if let Some(e) = r.errno_ret {
                v["errnoRet"] = serde_json::Value::String(e.to_string());
            }
            if !r.args.is_empty() {
                v["args"] = serde_json::to_value(&r.args).unwrap_or_default();
            }
            v
        })
        .collect();
    // SPO's spec has no defaultErrnoRet: the profile's default errno is the kernel's EPERM.
    serde_json::json!({
        "apiVersion": "security-profiles-operator.x-k8s.io/v1beta1",
        "kind": "SeccompProfile",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { "app.kubernetes.io/managed-by": "notebook-guard" },
        },
        "spec": {
            "defaultAction": p.default_action,
            "architectures": p.architectures,
            "syscalls": syscalls,
        },
    })
}

/// A Zero to JupyterHub values snippet that gives the notebook container (not the init
/// containers, and without replacing KubeSpawner's pod security context) the profile that
/// kubelet finds at `<kubelet root>/seccomp/<localhost_path>`.
pub fn to_kubespawner_values(localhost_path: &str) -> serde_json::Value {
    serde_json::json!({
        "hub": { "config": { "KubeSpawner": { "container_security_context": {
            "seccompProfile": { "type": "Localhost", "localhostProfile": localhost_path }
        }}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn coverage(names: &[&str]) -> Coverage {
        let m: BTreeMap<String, usize> = names.iter().map(|n| (n.to_string(), 1)).collect();
        Coverage { recordings: 1, syscalls: BTreeMap::from([(Arch::X86_64, m)]), ..Default::default() }
    }

    #[test]
    fn never_looser_than_docker_and_keeps_its_argument_rules() {
        let g =
            generate(&coverage(&["read", "unshare", "mount", "clone", "socket", "personality"]), &Default::default());
        let allowed = allowed_names(&g.profile);
        assert!(!allowed.contains("unshare") && !allowed.contains("mount"));
        assert_eq!(g.refused_by_docker, BTreeSet::from(["mount".to_string(), "unshare".to_string()]));
        for r in g.profile.syscalls.iter().filter(|r| r.action == ACT_ALLOW) {
            for n in &r.names {
                assert!(docker::permits(n), "{n} allowed beyond Docker");
                if docker::is_conditional(n) {
                    assert!(!r.args.is_empty(), "{n} lost Docker's argument checks");
                }
            }
        }
        let clone = g.profile.syscalls.iter().find(|r| r.names == ["clone"]).unwrap();
        assert_eq!(clone.args[0].value, docker::CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone.args[0].op, "SCMP_CMP_MASKED_EQ");
        assert_eq!(g.profile.syscalls.iter().filter(|r| r.names == ["personality"]).count(), 5);
        // An explicit, reviewed exception is honoured.
        let opts = GenerateOptions { beyond_docker: BTreeSet::from(["unshare".to_string()]), ..Default::default() };
        assert!(allowed_names(&generate(&coverage(&["unshare"]), &opts).profile).contains("unshare"));
    }

    #[test]
    fn clone3_answers_enosys_and_brings_clone() {
        // glibc's pthread_create tries clone3 and falls back to clone only on ENOSYS.
        let g = generate(&coverage(&["clone3", "read"]), &Default::default());
        let enosys = g.profile.syscalls.iter().find(|r| r.errno_ret == Some(ENOSYS)).unwrap();
        assert!(enosys.names.contains(&"clone3".to_string()));
        assert!(g.profile.syscalls.iter().any(|r| r.names == ["clone"] && r.action == ACT_ALLOW));
        assert!(g.refused_by_docker.is_empty(), "{:?}", g.refused_by_docker);
        // Newer calls that were not recorded answer ENOSYS, not EPERM.
        assert!(enosys.names.contains(&"openat2".to_string()));
        assert!(validate(&g.profile).is_empty(), "{:?}", validate(&g.profile));
    }

    #[test]
    fn validation_names_the_bad_rule() {
        let mut p = generate(&coverage(&["read"]), &Default::default()).profile;
        p.syscalls.push(OciRule::allow(vec!["read_everything".into()]));
        p.syscalls[0].action = "SCMP_ACT_MAYBE".into();
        let errs = validate(&p);
        assert!(errs.iter().any(|e| e.starts_with("syscalls[0].action")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("read_everything")), "{errs:?}");
    }
}
