//! Seccomp profiles beyond one session: recordings merged into coverage and every output
//! format, drift from a notebook's assigned profile, and a Kubernetes pod recorded from its pod
//! cgroup.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use guard::seccomp::{arch::Arch, recording::RecordingFile};
use guard_tests::{
    guard_bin, privileged,
    seccomp::{guard, ok, Recording},
    spawn_in, test_python, wait_ok, Exec, TempDir, TestCgroup,
};
use serde_json::Value;

#[test]
fn recordings_merge_into_coverage_and_generate_every_format() {
    privileged!();
    let dir = TempDir::new("merge").unwrap();
    // Two users' notebooks doing different things.
    let mut files = Vec::new();
    for (i, cmd) in [["/usr/bin/true", "true"], ["/usr/bin/ls", "ls"]].iter().enumerate() {
        let (cg, _user) = TestCgroup::tljh().unwrap();
        let out = dir.0.join(format!("r{i}.json"));
        let rec = Recording::start(&["--cgroup", &cg.rel.display().to_string()], &out);
        let pid = spawn_in(&cg, Exec::Path(Path::new(cmd[0])), &[std::ffi::OsStr::new(cmd[1])]).unwrap();
        wait_ok(pid).unwrap();
        rec.stop();
        files.push(out);
    }
    let sets: Vec<BTreeSet<String>> =
        files.iter().map(|f| RecordingFile::load(f).unwrap().recordings[0].syscalls[&Arch::X86_64].clone()).collect();
    let merged = dir.0.join("merged.json");
    ok(&guard(&[
        "seccomp",
        "merge",
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
    ]));
    let m: Value = serde_json::from_slice(&std::fs::read(&merged).unwrap()).unwrap();
    let cov = m["coverage"]["syscalls"]["SCMP_ARCH_X86_64"].as_object().unwrap();
    let union: BTreeSet<String> = sets[0].union(&sets[1]).cloned().collect();
    assert_eq!(cov.keys().cloned().collect::<BTreeSet<_>>(), union, "the merge is the union");
    for (name, count) in cov {
        let expected = sets.iter().filter(|s| s.contains(name)).count();
        assert_eq!(count.as_u64(), Some(expected as u64), "{name}");
    }
    assert_eq!(m["coverage"]["recordings"], 2);

    // min-coverage 2 keeps only what both used (plus what the runtime always needs).
    let both = dir.0.join("both.json");
    ok(&guard(&[
        "seccomp",
        "generate",
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        "--min-coverage",
        "2",
        "-o",
        both.to_str().unwrap(),
    ]));
    let p: guard::seccomp::oci::OciProfile = serde_json::from_slice(&std::fs::read(&both).unwrap()).unwrap();
    let allowed = guard::seccomp::profile::allowed_names(&p);
    let only_ls: Vec<&String> = sets[1]
        .difference(&sets[0])
        .filter(|n| !guard::seccomp::profile::RUNTIME_NEEDS.contains(&n.as_str()))
        .collect();
    assert!(!only_ls.is_empty());
    assert!(only_ls.iter().all(|n| !allowed.contains(*n)), "{only_ls:?} used by one recording only");

    // SPO: the SeccompProfile CRD's field names and types (errnoRet is a string there).
    let spo = dir.0.join("sp.yaml");
    let f0 = files[0].to_str().unwrap();
    ok(&guard(&[
        "seccomp",
        "generate",
        f0,
        "--format",
        "spo",
        "--name",
        "nb",
        "--namespace",
        "jhub",
        "-o",
        spo.to_str().unwrap(),
    ]));
    let sp: SpoSeccompProfile = serde_yaml_ng::from_slice(&std::fs::read(&spo).unwrap()).unwrap();
    assert_eq!(sp.api_version, "security-profiles-operator.x-k8s.io/v1beta1");
    assert_eq!(sp.kind, "SeccompProfile");
    assert_eq!(sp.metadata.namespace, "jhub");
    assert_eq!(sp.spec.default_action, "SCMP_ACT_ERRNO");
    assert!(sp.spec.syscalls.iter().any(|s| s.errno_ret.as_deref() == Some("38")), "ENOSYS fallbacks");

    // KubeSpawner: the snippet goes through KubeSpawner's own pod builder.
    let values = dir.0.join("values.yaml");
    ok(&guard(&[
        "seccomp",
        "generate",
        f0,
        "--format",
        "kubespawner",
        "--localhost-profile",
        "profiles/nb.json",
        "-o",
        values.to_str().unwrap(),
    ]));
    let v: Value = serde_yaml_ng::from_slice(&std::fs::read(&values).unwrap()).unwrap();
    let ctx = &v["hub"]["config"]["KubeSpawner"]["container_security_context"];
    assert_eq!(ctx["seccompProfile"]["type"], "Localhost");
    let pod = Command::new(test_python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/kubespawner_pod.py"))
        .arg(serde_json::to_string(ctx).unwrap())
        .output()
        .unwrap();
    let pod: Value = serde_json::from_str(&ok(&pod)).unwrap();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["seccompProfile"]["localhostProfile"], "profiles/nb.json");
    assert!(pod["spec"]["securityContext"]["seccompProfile"].is_null(), "the pod-level context is KubeSpawner's own");

    // Names are checked against libseccomp: a hand-edited recording with a bad name is refused.
    let bad = dir.0.join("bad.json");
    let text = std::fs::read_to_string(&files[0]).unwrap().replacen("\"execve\"", "\"execve_please\"", 1);
    std::fs::write(&bad, text).unwrap();
    let out = guard(&["seccomp", "generate", bad.to_str().unwrap(), "-o", dir.0.join("x.json").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("execve_please") && err.contains("recordings[0].syscalls"), "{err}");
    assert!(!dir.0.join("x.json").exists(), "nothing is written on error");

    // diff: reviewing the min-coverage change.
    let union_p = dir.0.join("union.json");
    ok(&guard(&["seccomp", "generate", f0, files[1].to_str().unwrap(), "-o", union_p.to_str().unwrap()]));
    let d = guard(&["seccomp", "diff", both.to_str().unwrap(), union_p.to_str().unwrap()]);
    assert_eq!(d.status.code(), Some(1), "profiles differ");
    let text = String::from_utf8_lossy(&d.stdout);
    for n in &only_ls {
        if guard::seccomp::docker::permits(n) {
            assert!(text.lines().any(|l| l.starts_with(&format!("+ {n}:"))), "{n} in\n{text}");
        }
    }

    // merge → generate: the merged file is an input too, and gives the recordings' profile.
    let from_merged = dir.0.join("from-merged.json");
    ok(&guard(&[
        "seccomp",
        "generate",
        merged.to_str().unwrap(),
        "--min-coverage",
        "2",
        "-o",
        from_merged.to_str().unwrap(),
    ]));
    let same = guard(&["seccomp", "diff", both.to_str().unwrap(), from_merged.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stdout));
    assert!(String::from_utf8_lossy(&same.stdout).starts_with("identical:"), "diff says so when they are the same");
    let filtered = guard(&["seccomp", "generate", merged.to_str().unwrap(), "--image", "x", "-o", "/dev/null"]);
    assert!(!filtered.status.success() && String::from_utf8_lossy(&filtered.stderr).contains("--image"));
}

/// The SPO SeccompProfile's field names (security-profiles-operator.x-k8s.io/v1beta1); unknown
/// fields are errors, as the API server's structural schema would prune or reject them.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpoSeccompProfile {
    api_version: String,
    kind: String,
    metadata: SpoMeta,
    spec: SpoSpec,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoMeta {
    #[allow(dead_code)]
    name: String,
    namespace: String,
    #[allow(dead_code)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpoSpec {
    default_action: String,
    #[allow(dead_code)]
    architectures: Vec<String>,
    syscalls: Vec<SpoSyscall>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct SpoSyscall {
    names: Vec<String>,
    action: String,
    errno_ret: Option<String>,
    #[serde(default)]
    args: Vec<SpoArg>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct SpoArg {
    index: u32,
    value: u64,
    value_two: u64,
    op: String,
}

#[test]
fn a_syscall_outside_the_assigned_profile_raises_drift_for_that_notebook_only() {
    privileged!();
    let dir = TempDir::new("drift").unwrap();
    // The profile: what a plain `python -c pass` needs.
    let rec_cg = TestCgroup::new("drift-rec").unwrap();
    let rec_path = dir.0.join("r.json");
    let rec = Recording::start(&["--cgroup", &rec_cg.rel.display().to_string()], &rec_path);
    let py = test_python();
    let pid = spawn_in(&rec_cg, Exec::Path(&py), &[py.as_os_str(), "-c".as_ref(), "pass".as_ref()]).unwrap();
    wait_ok(pid).unwrap();
    rec.stop();
    let profile = dir.0.join("profile.json");
    ok(&guard(&["seccomp", "generate", rec_path.to_str().unwrap(), "-o", profile.to_str().unwrap()]));

    // Alice's notebook is assigned the profile; Bob's is not.
    let (alice_cg, alice) = TestCgroup::tljh().unwrap();
    let (bob_cg, bob) = TestCgroup::tljh().unwrap();
    let policy = format!(
        "overrides:\n  - name: profiled\n    match: {{users: [{alice}]}}\n    seccomp_profile: {}\n",
        profile.display()
    );
    let g = guard_tests::GuardProcess::start(&policy, &[]).unwrap();
    assert!(g.log().contains("drift watch attached"), "{}", g.log());
    // unshare(0) changes nothing but is a real unshare call, outside the profile.
    let code = "import ctypes; ctypes.CDLL(None).unshare(0)";
    for cg in [&alice_cg, &bob_cg] {
        let pid = spawn_in(cg, Exec::Path(&py), &[py.as_os_str(), "-c".as_ref(), code.as_ref()]).unwrap();
        wait_ok(pid).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let drift = |alerts: &[Value], user: &str| -> Vec<Value> {
        alerts
            .iter()
            .filter(|a| a["rule"] == "notebook.seccomp_drift" && a["output_fields"]["jupyterhub.user"] == user)
            .cloned()
            .collect()
    };
    while drift(&g.alerts(), &alice).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let alerts = g.stop().unwrap();
    let mine = drift(&alerts, &alice);
    let unshare = mine
        .iter()
        .find(|a| a["output_fields"]["syscall.name"] == "unshare")
        .unwrap_or_else(|| panic!("no drift alert for unshare: {mine:?}"));
    let f = &unshare["output_fields"];
    assert_eq!(f["syscall.arch"], "SCMP_ARCH_X86_64");
    assert_eq!(f["seccomp.verdict"], "SCMP_ACT_ERRNO(1)");
    assert_eq!(f["seccomp.profile"], profile.display().to_string());
    assert_eq!(f["jupyterhub.source"], "tljh");
    // Once per notebook and syscall; nothing the profile allows; nothing for Bob.
    assert_eq!(mine.iter().filter(|a| a["output_fields"]["syscall.name"] == "unshare").count(), 1);
    assert!(!mine.iter().any(|a| a["output_fields"]["syscall.name"] == "read"), "{mine:?}");
    assert!(drift(&alerts, &bob).is_empty(), "bob has no profile");
}

#[test]
fn a_kubernetes_pod_is_recorded_from_its_pod_cgroup_with_user_and_image() {
    privileged!();
    // A Z2JH notebook pod served by a fake API server, and its cgroups laid out as kubelet's
    // systemd driver does; the process runs in the container's cgroup, below the pod's.
    let uid = format!("5eccc0b0-{:04x}-4c4d-9a8b-0123456789ab", std::process::id() & 0xffff);
    let name = format!("jupyter-carol---{}", &uid[..8]);
    let notebook_ctr = "ab".repeat(32);
    let pod = guard_tests::fake_kube::notebook_pod(&name, &uid, "Carol", "", &notebook_ctr, &"cd".repeat(32));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let api = rt.block_on(guard_tests::fake_kube::FakeKube::start(vec![pod]));
    let dir = TempDir::new("seccomp-pod").unwrap();
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let pod_cg = TestCgroup::exact(
        Path::new("kubepods.slice/kubepods-burstable.slice"),
        &format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
    )
    .unwrap();
    let ctr_cg =
        TestCgroup::exact(pod_cg.rel.strip_prefix("/").unwrap(), &format!("cri-containerd-{notebook_ctr}.scope"))
            .unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let env = [("KUBECONFIG", kc), ("NODE_NAME", "node-1")];

    let by_pod = dir.0.join("pod.json");
    let spec = format!("jhub/{name}");
    let rec = Recording::start_env(&["--pod", &spec], &by_pod, &env);
    let pid = spawn_in(&ctr_cg, Exec::Path(Path::new("/usr/bin/true")), &[std::ffi::OsStr::new("true")]).unwrap();
    wait_ok(pid).unwrap();
    let file = rec.stop();
    let r = &file.recordings[0];
    assert_eq!(r.target.user.as_deref(), Some("Carol"), "the username annotation");
    assert_eq!(r.target.pod.as_deref(), Some(name.as_str()));
    assert_eq!(r.target.namespace.as_deref(), Some("jhub"));
    assert_eq!(
        r.target.image.as_deref(),
        Some("quay.io/jupyter/scipy-notebook:2025-01-01"),
        "the notebook container's image"
    );
    assert_eq!(r.target.cgroup, pod_cg.rel.display().to_string(), "recorded at the pod level");
    assert!(r.syscalls[&Arch::X86_64].contains("execve"), "{r:?}");

    // --notebooks finds the same pod through the node's pod list.
    let all = dir.0.join("all.json");
    let rec = Recording::start_env(&["--notebooks"], &all, &env);
    let pid = spawn_in(&ctr_cg, Exec::Path(Path::new("/usr/bin/true")), &[std::ffi::OsStr::new("true")]).unwrap();
    wait_ok(pid).unwrap();
    let file = rec.stop();
    let mine: Vec<_> = file.recordings.iter().filter(|r| r.target.pod.as_deref() == Some(name.as_str())).collect();
    assert_eq!(mine.len(), 1, "{:?}", file.recordings.iter().map(|r| &r.target).collect::<Vec<_>>());
    assert!(mine[0].syscalls[&Arch::X86_64].contains("execve"));

    // A pod the API does not know is an error that names it.
    let out = Command::new(guard_bin())
        .env("KUBECONFIG", kc)
        .args(["seccomp", "record", "--pod", "jhub/nobody", "--duration", "1", "-o"])
        .arg(dir.0.join("x.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("jhub/nobody"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(ctr_cg);
    drop(pod_cg);
    rt.block_on(api.stop());
}
