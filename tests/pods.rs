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
    api.agent(
        dir,
        &format!("overrides:\n  - name: under-test\n    match: {{users: [{enforced}]}}\n    mode: enforce\n"),
    )
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

#[test]
fn notebook_pods_in_real_containers_are_attributed_enforced_and_monitored() {
    privileged!();
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
    // The shell's line and the cell's own reach the front end in either order, or one inside
    // the other: `print` writes "rc" and " 0" apart, and CI once saw "rcPOD-EXEC\n 0".
    let first = out(&b, 0);
    assert!(first.contains("POD-EXEC\n") || first.ends_with("POD-EXEC"), "{b:?}");
    assert_eq!(first.replacen("POD-EXEC", "", 1).split_whitespace().collect::<Vec<_>>(), ["rc", "0"], "{b:?}");
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
    privileged!();
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

/// A notebook session's ordinary work: files on the home volume, a thread, a listening socket,
/// a Python child.
const SESSION: &[&str] = &[
    "open('/home/jovyan/data.txt', 'w').write('x' * 1000)\nprint(len(open('/home/jovyan/data.txt').read()))",
    "import threading\nt = threading.Thread(target=sum, args=([1, 2],))\nt.start(); t.join()\nprint('thread ok')",
    "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\ns.close()\nprint('listen ok')",
    "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(5)'], capture_output=True, text=True).stdout.strip())",
];

/// What a notebook never needs and an unprivileged process may still do: read a process's
/// memory (ptrace-class; here its own). Prints the errno (0: it worked).
const VM_READ: &str = "import ctypes, os\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
class iovec(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n\
dst, src = ctypes.create_string_buffer(8), ctypes.create_string_buffer(b'abcdefg')\n\
l, r = iovec(ctypes.cast(dst, ctypes.c_void_p), 8), iovec(ctypes.cast(src, ctypes.c_void_p), 8)\n\
n = libc.process_vm_readv(os.getpid(), ctypes.byref(l), 1, ctypes.byref(r), 1, 0)\n\
print('errno', 0 if n == 8 else ctypes.get_errno())";

#[test]
fn a_pod_recorded_in_a_real_container_runs_its_session_under_the_generated_profile() {
    privileged!();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("pods-seccomp").unwrap();
    let recorded = Pod::new("jupyter-dana---9f8e7d6c", "Dana", Driver::Systemd).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![recorded.manifest()]));
    let kc = dir.0.join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    // 1. Record the pod from its pod-level cgroup, from before its container starts.
    recorded.prepare().unwrap();
    let rec_path = dir.0.join("dana.json");
    let mut rec = std::process::Command::new(guard_bin())
        .env("KUBECONFIG", &kc)
        .env("NODE_NAME", "node-1")
        .args(["seccomp", "record", "--pod", &format!("jhub/{}", recorded.name), "--duration", "300", "-o"])
        .arg(&rec_path)
        .stderr(std::fs::File::create(dir.0.join("rec.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(dir.0.join("rec.log")).unwrap_or_default().contains("recording") {
        assert!(std::time::Instant::now() < deadline, "{}", std::fs::read_to_string(dir.0.join("rec.log")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    recorded.start(&net.notebook).unwrap();
    let (_, first) = recorded.run_cells(&net.notebook, NOTEBOOK, SESSION).unwrap_or_else(|e| panic!("{e:#}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.id() as i32), nix::sys::signal::SIGINT).unwrap();
    assert!(wait_within(&mut rec, Duration::from_secs(30)).unwrap().is_some_and(|s| s.success()));
    // Unconfined, the call the session never made works.
    let (_, control) = recorded.run_cells(&net.notebook, NOTEBOOK, &[VM_READ]).unwrap();
    assert_eq!(control[0].stdout.trim(), "errno 0", "{control:?}");
    recorded.stop();
    let file: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    let r = &file["recordings"][0];
    assert_eq!(r["target"]["user"], "Dana");
    assert_eq!(r["target"]["pod"], recorded.name.as_str());
    assert_eq!(r["target"]["namespace"], "jhub");
    let calls: Vec<&str> =
        r["syscalls"]["SCMP_ARCH_X86_64"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for c in ["execve", "listen", "bind", "openat", "write"] {
        assert!(calls.contains(&c), "{c} not recorded: {calls:?}");
    }
    assert!(!calls.contains(&"process_vm_readv"));

    // 2. A profile from the recording; the same session in a new pod under it.
    let profile = dir.0.join("profile.json");
    let out = std::process::Command::new(guard_bin())
        .args(["seccomp", "generate"])
        .arg(&rec_path)
        .args(["--format", "oci", "-o"])
        .arg(&profile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let profile: Value = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    let confined = Pod::new("jupyter-dana---1a2b3c4d", "Dana", Driver::Cgroupfs).unwrap();
    confined.start_with(&net.notebook, Some(&profile)).unwrap();
    let mut cells = SESSION.to_vec();
    cells.push(VM_READ);
    let (_, second) =
        confined.run_cells(&net.notebook, NOTEBOOK, &cells).unwrap_or_else(|e| panic!("{e:#}\n{}", confined.log()));
    let outs = |r: &[CellResult]| r.iter().take(SESSION.len()).map(|c| c.stdout.clone()).collect::<Vec<_>>();
    assert_eq!(outs(&second), outs(&first), "every cell gives the same output under the profile");
    assert_eq!(second[SESSION.len()].stdout.trim(), "errno 1", "what the session never did is refused: {second:?}");
    drop((recorded, confined));
}

/// What the notebook's user can do to the interpreter tree it owns (docker-stacks' /opt/conda):
/// each cell prints `rc <returncode> <stdout>`.
const TREE: &[&str] = &[
    // Shell bytes under an interpreter path: a copy of dash named python3 in a new env.
    "import os, shutil, subprocess\nos.makedirs('/opt/conda/envs/x/bin', exist_ok=True)\nshutil.copy('/usr/bin/dash', '/opt/conda/envs/x/bin/python3')\nr = subprocess.run(['/opt/conda/envs/x/bin/python3', '-c', 'echo SHELL-RAN'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.strip() or '-')",
    // A copy of the interpreter with one byte changed.
    "import os, shutil, subprocess\nos.makedirs('/opt/conda/envs/y/bin', exist_ok=True)\nshutil.copy('/opt/conda/bin/python3.11', '/opt/conda/envs/y/bin/python3')\nopen('/opt/conda/envs/y/bin/python3', 'ab').write(b'\\0')\nr = subprocess.run(['/opt/conda/envs/y/bin/python3', '-c', 'print(6*7)'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.strip() or '-')",
    // The image's own interpreter, not running, changed in place.
    "import subprocess\nopen('/opt/conda/bin/python3.11', 'ab').write(b'\\0')\nr = subprocess.run(['/opt/conda/bin/python3.11', '-c', 'print(1)'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.strip() or '-')",
    // The running interpreter, as Python starts its children.
    "import subprocess, sys\nr = subprocess.run([sys.executable, '-c', 'print(5)'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.strip() or '-')",
];

/// A byte-identical copy, as `conda create` makes (after the 5 s an unknown interpreter waits
/// before the agent looks at the tree again, with 2 s to spare: under a loaded machine the
/// last look may itself have come late).
const CONDA_COPY: &str = "import os, shutil, subprocess, time\nos.makedirs('/opt/conda/envs/z/bin', exist_ok=True)\nshutil.copy('/opt/conda/bin/python3', '/opt/conda/envs/z/bin/python3')\ntime.sleep(7)\nr = subprocess.run(['/opt/conda/envs/z/bin/python3', '-c', 'print(6*7)'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.strip() or '-')";

/// The shell bytes again, after the agent has looked at the tree again (the copy above made
/// it): still not Python.
const AGAIN: &str = "import subprocess\nr = subprocess.run(['/opt/conda/envs/x/bin/python3', '-c', 'echo AGAIN'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.strip() or '-')";

#[test]
fn what_the_notebook_user_writes_in_the_interpreter_tree_it_owns_is_never_python() {
    privileged!();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("pods-trust").unwrap();
    let enforced = Pod::new("jupyter-erin---2b3c4d5e", "erin", Driver::Systemd).unwrap();
    let monitored = Pod::new("jupyter-frank---3c4d5e6f", "frank", Driver::Cgroupfs).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![enforced.manifest(), monitored.manifest()]));
    let g = start_agent(&api, &dir, "erin");
    enforced.start(&net.notebook).unwrap();
    monitored.start(&net.notebook).unwrap();
    wait_placed(&g, &enforced);
    wait_placed(&g, &monitored);
    // Under enforcement a conda-style copy made at run time is refused at its first exec (the
    // kernel cannot tell it is a copy); the agent then looks at the tree again and the kernel
    // learns it, so a later exec runs. The look takes a moment (about a second on a busy CI
    // node), so the cell tries every half second for a while rather than once.
    let again = "import subprocess, time\nfor _ in range(30):\n    time.sleep(0.5)\n    r = subprocess.run(['/opt/conda/envs/z/bin/python3', '-c', 'print(6*7)'], capture_output=True, text=True)\n    if r.returncode == 0:\n        break\nprint('rc', r.returncode, r.stdout.strip() or '-')";
    let mut enforced_cells = TREE.to_vec();
    enforced_cells.extend([CONDA_COPY, again]);
    let (_, e) = enforced.run_cells(&net.notebook, NOTEBOOK, &enforced_cells).unwrap_or_else(|err| panic!("{err:#}"));
    let mut cells = TREE.to_vec();
    cells.extend([CONDA_COPY, AGAIN]);
    let (_, m) = monitored.run_cells(&net.notebook, NOTEBOOK, &cells).unwrap_or_else(|err| panic!("{err:#}"));
    std::thread::sleep(Duration::from_millis(300));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let out = |r: &[CellResult], i: usize| r[i].stdout.trim().to_string();

    // Enforced: none of it runs as Python; the running interpreter still does.
    for i in 0..3 {
        assert_eq!(out(&e, i), "rc -9 -", "cell {i} was let through: {e:?}\n{log}");
    }
    assert_eq!(out(&e, 3), "rc 0 5", "{e:?}");
    assert_eq!(out(&e, 4), "rc -9 -", "first exec of the copy, before the agent learns it: {e:?}");
    assert_eq!(out(&e, 5), "rc 0 42", "the kernel learned the byte-identical copy: {e:?}\n{log}");
    // Monitored: it runs, and each is reported; the conda-style copy is Python.
    assert_eq!(
        [out(&m, 0), out(&m, 1), out(&m, 2), out(&m, 3)],
        ["rc 0 SHELL-RAN", "rc 0 42", "rc 0 1", "rc 0 5"],
        "{m:?}"
    );
    assert_eq!(out(&m, 4), "rc 0 42", "{m:?}");
    assert_eq!(out(&m, 5), "rc 0 AGAIN", "{m:?}");
    let of = |pod: &Pod, exe: &str| {
        alerts
            .iter()
            .filter(|a| field(a, "k8s.pod.name") == pod.name.as_str() && field(a, "proc.exepath") == exe)
            .count()
    };
    for exe in ["/opt/conda/envs/x/bin/python3", "/opt/conda/envs/y/bin/python3", "/opt/conda/bin/python3.11"] {
        assert!(of(&monitored, exe) > 0, "no alert for {exe}:\n{alerts:#?}");
        assert!(of(&enforced, exe) > 0, "no kill reported for {exe}:\n{alerts:#?}");
    }
    assert_eq!(of(&monitored, "/opt/conda/envs/z/bin/python3"), 0, "a byte-identical copy is Python:\n{alerts:#?}");
    assert!(
        alerts.iter().any(|a| field(a, "k8s.pod.name") == monitored.name.as_str()
            && field(a, "proc.cmdline").as_str().is_some_and(|c| c.ends_with("echo AGAIN"))),
        "looking at the tree again did not make the shell bytes Python:\n{alerts:#?}"
    );
    assert!(log.contains("not trusted as Python"), "the agent says what it refused:\n{log}");
}
