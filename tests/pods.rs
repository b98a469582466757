//! Notebook pods as real containers (`guard_tests::pod`): the notebook image run by runc as
//! uid 1000 in kubelet-shaped pod cgroups, a real Jupyter server inside whose sessions API
//! starts the kernels, attributed through a fake API server serving Z2JH-shaped pods. The
//! attack, enforcement and egress checks run against this shape.

use std::time::Duration;

use guard_tests::{
    fake_kube::FakeKube,
    pod::{Driver, Pod},
    *,
};
use serde_json::Value;

const NOTEBOOK: &str = "work/churn-model.ipynb";

/// Kubernetes discovery on (the fake API), `enforced`'s notebooks enforced.
fn start_agent(api: &FakeKube, dir: &TempDir, enforced: &str) -> GuardProcess {
    let kc = dir.0.join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    let env = [("KUBECONFIG", kc.as_os_str()), ("NODE_NAME", std::ffi::OsStr::new("node-1"))];
    let policy = format!(
        "discovery:\n  kubernetes:\n    enabled: true\noverrides:\n  - name: under-test\n    match: {{users: [{enforced}]}}\n    mode: enforce\n"
    );
    GuardProcess::start_env(&policy, &[], &env).unwrap()
}

/// Waits until the agent has placed the pod (its pod-level cgroup is watched).
fn wait_placed(g: &GuardProcess, pod: &Pod) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !g.log().lines().any(|l| l.contains("notebook pod on this node") && l.contains(&pod.uid)) {
        assert!(std::time::Instant::now() < deadline, "pod {} never placed:\n{}", pod.name, g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CELLS: &[&str] = &[
    "import os\nprint('rc', os.system('echo POD-EXEC'))",
    "import subprocess\nprint('rc', subprocess.run(['ls', '/'], capture_output=True).returncode)",
    "get_ipython().run_cell_magic('bash', '', 'echo BASH-RAN\\n')",
    "import shutil, os, subprocess\nshutil.copy('/bin/true', '/tmp/dropped')\nos.chmod('/tmp/dropped', 0o755)\nprint('rc', subprocess.run(['/tmp/dropped']).returncode)",
    "import socket\ntry:\n    socket.create_connection(('10.0.0.5', 80), timeout=3)\n    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)",
    "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(6*7)'], capture_output=True, text=True).stdout.strip())",
    "import os\nprint('alive', os.getuid())",
];

fn field<'a>(a: &'a Value, k: &str) -> &'a Value {
    &a["output_fields"][k]
}

#[test]
fn notebook_pods_in_real_containers_are_attributed_enforced_and_monitored() {
    if !require_root("notebook_pods_in_real_containers_are_attributed_enforced_and_monitored") {
        return;
    }
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("pods").unwrap();
    let alice = Pod::new("jupyter-alice---5e1f0a2b", "Alice", Driver::Systemd).unwrap();
    let bob = Pod::new("jupyter-bob---7d2c9e41", "bob@example.org", Driver::Cgroupfs).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![alice.manifest(), bob.manifest()]));
    let g = start_agent(&api, &dir, "Alice");
    // As kubelet: the pod is scheduled (and its cgroup made) before its container starts.
    alice.start(&net.notebook).unwrap();
    bob.start(&net.notebook).unwrap_or_else(|e| panic!("{e:#}"));
    wait_placed(&g, &alice);
    wait_placed(&g, &bob);
    let (a_kernel, a) = alice.run_cells(&net.notebook, NOTEBOOK, CELLS).unwrap_or_else(|e| panic!("{e:#}"));
    let (b_kernel, b) = bob.run_cells(&net.notebook, NOTEBOOK, CELLS).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_millis(300));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let out = |r: &[CellResult], i: usize| r[i].stdout.trim().to_string();

    // Enforced: every route to a non-Python program dies before it runs; Python work goes on.
    assert_eq!(out(&a, 0), "rc 9", "{a:?}\n{log}");
    assert_eq!(out(&a, 1), "rc -9", "{a:?}");
    assert!(!a[2].stdout.contains("BASH-RAN"), "{a:?}");
    assert_eq!(out(&a, 3), "rc -9", "{a:?}");
    assert_eq!(out(&a, 4), "errno 1", "{a:?}");
    assert_eq!(out(&a, 5), "42", "{a:?}");
    assert_eq!(out(&a, 6), "alive 1000", "{a:?}");
    // Monitored: everything runs, and is reported.
    // (the shell's output and the cell's own reach the front end in either order)
    assert!(out(&b, 0).contains("POD-EXEC") && out(&b, 0).contains("rc 0"), "{b:?}");
    assert_eq!(out(&b, 4), "errno 111", "{b:?}");
    assert_eq!(out(&b, 6), "alive 1000", "{b:?}");

    for (pod, kernel, action) in [(&alice, &a_kernel, "killed"), (&bob, &b_kernel, "alert")] {
        let mine: Vec<&Value> = alerts.iter().filter(|x| field(x, "k8s.pod.name") == pod.name.as_str()).collect();
        let shell = mine
            .iter()
            .find(|x| x["rule"] == "notebook.non_python_exec" && field(x, "proc.cmdline") == "sh -c echo POD-EXEC")
            .unwrap_or_else(|| panic!("no alert for {}'s os.system:\n{mine:#?}\n{log}", pod.name));
        assert_eq!(field(shell, "guard.action"), action);
        assert_eq!(field(shell, "jupyterhub.user"), pod.user.as_str());
        assert_eq!(field(shell, "k8s.ns.name"), "jhub");
        assert_eq!(field(shell, "container.id"), pod.container_id.as_str());
        assert_eq!(field(shell, "user.uid"), 1000);
        assert_eq!(field(shell, "notebook.path"), "/home/jovyan/churn-model.ipynb");
        assert_eq!(field(shell, "notebook.kernel_id"), kernel.as_str());
        for rule in ["notebook.exec_from_writable_path", "notebook.unexpected_egress"] {
            assert!(mine.iter().any(|x| x["rule"] == rule), "{}: no {rule}:\n{mine:#?}", pod.name);
        }
        assert!(
            mine.iter().any(|x| field(x, "proc.exepath") == "/usr/bin/bash" || field(x, "proc.exepath") == "/bin/bash"),
            "{}: %%bash:\n{mine:#?}",
            pod.name
        );
    }
    // The servers' and kernels' own start-up (uname for platform, …) and the Python work raise
    // nothing: every non-Python exec reported is one a cell asked for.
    let noise: Vec<&Value> = alerts
        .iter()
        .filter(|x| x["rule"] == "notebook.non_python_exec" && !field(x, "k8s.pod.name").is_null())
        .filter(|x| {
            let exe = field(x, "proc.exepath").as_str().unwrap_or("");
            !["/bin/sh", "/usr/bin/sh", "/bin/ls", "/usr/bin/ls", "/bin/bash", "/usr/bin/bash"].contains(&exe)
        })
        .collect();
    assert!(noise.is_empty(), "alerts the cells did not cause:\n{noise:#?}");
    drop((alice, bob));
}

#[test]
fn a_pod_deleted_and_made_again_with_the_same_name_is_the_new_pod() {
    if !require_root("a_pod_deleted_and_made_again_with_the_same_name_is_the_new_pod") {
        return;
    }
    // KubeSpawner's pod names are fixed per user: a restarted server is a new pod (new UID, new
    // cgroups) with the old one's name.
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("pods-again").unwrap();
    let first = Pod::new("jupyter-carol---0a1b2c3d", "carol", Driver::Systemd).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![first.manifest()]));
    let g = start_agent(&api, &dir, "carol");
    first.start(&net.notebook).unwrap();
    wait_placed(&g, &first);
    let cells = ["import os\nprint('rc', os.system('echo AGAIN'))"];
    let (_, one) = first.run_cells(&net.notebook, NOTEBOOK, &cells).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(one[0].stdout.trim(), "rc 9", "{one:?}");
    rt.block_on(api.push("DELETED", first.manifest()));
    first.stop();
    let second = Pod::new(&first.name, "carol", Driver::Systemd).unwrap();
    rt.block_on(api.push("ADDED", second.manifest()));
    second.start(&net.notebook).unwrap();
    wait_placed(&g, &second);
    let (kernel, two) = second.run_cells(&net.notebook, NOTEBOOK, &cells).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(two[0].stdout.trim(), "rc 9", "the new pod is enforced from the start: {two:?}\n{}", g.log());
    std::thread::sleep(Duration::from_millis(300));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let killed: Vec<&Value> = alerts
        .iter()
        .filter(|a| field(a, "k8s.pod.name") == first.name.as_str() && field(a, "guard.action") == "killed")
        .collect();
    let ids: std::collections::BTreeSet<&str> =
        killed.iter().filter_map(|a| field(a, "container.id").as_str()).collect();
    assert_eq!(
        ids,
        [first.container_id.as_str(), second.container_id.as_str()].into(),
        "each pod's kill is reported under its own container:\n{killed:#?}\n{log}"
    );
    assert!(killed.iter().any(|a| field(a, "notebook.kernel_id") == kernel.as_str()));
    assert!(!log.contains("ERROR"), "{log}");
    drop((first, second));
}
