//! Shell-bypass detection and enforcement on a real IPython kernel (jupyter_client), started
//! inside a TLJH-shaped cgroup (`system.slice/jupyter-<user>.service`) with the real agent.

use std::collections::BTreeMap;

use guard_tests::*;
use serde_json::Value;
#[allow(unused_imports)]
use std::path::Path;

const NOTEBOOK: &str = "projects/secret-analysis.ipynb";
const TOKEN: &str = "tok-3f9a8c7e5d1b2a4f6e8d0c9b7a5f3e1d";

/// The test policy: the embedded default plus this venv's interpreter and this test binary as
/// a launcher (it starts the kernel driver the way a spawner would).
/// `enforce_user`: put only this user's notebook under enforcement (tests run in parallel and
/// each guard sees every test's notebook).
fn policy(enforce_user: Option<&str>) -> String {
    let venv_bin = test_python().parent().unwrap().to_path_buf();
    let me = std::env::current_exe().unwrap();
    let me = me.file_name().unwrap().to_string_lossy();
    let default = guard::policy::Policy::default_policy();
    let mut interpreters: Vec<String> = default.python.interpreters.clone();
    interpreters.push(format!("{}/python*", venv_bin.display()));
    let mut launchers: Vec<String> = default.launchers.iter().cloned().collect();
    launchers.push(me.into_owned());
    let overrides = match enforce_user {
        Some(u) => format!("overrides:\n  - name: under-test\n    match: {{users: [{u}]}}\n    mode: enforce\n"),
        None => String::new(),
    };
    format!(
        "mode: monitor\npython:\n  interpreters: {}\nlaunchers: {}\n{overrides}",
        serde_json::to_string(&interpreters).unwrap(),
        serde_json::to_string(&launchers).unwrap()
    )
}

/// (cell, rule it must raise, a substring of the offending exe path)
const ATTACKS: &[(&str, &str, &str)] = &[
    ("import os\nos.system('id > /dev/null')", "notebook.non_python_exec", "sh"),
    ("import subprocess\nsubprocess.run(['ls', '/'], capture_output=True)", "notebook.non_python_exec", "/ls"),
    ("get_ipython().system('whoami')", "notebook.non_python_exec", "sh"),
    ("get_ipython().run_cell_magic('bash', '', 'echo from-bash\\n')", "notebook.non_python_exec", "bash"),
    ("import os\npid = os.posix_spawn('/usr/bin/hostname', ['hostname'], os.environ)\nos.waitpid(pid, 0)", "notebook.non_python_exec", "hostname"),
    (
        "import ctypes, os\npid = os.fork()\nif pid == 0:\n    libc = ctypes.CDLL(None)\n    argv = (ctypes.c_char_p * 2)(b'date', None)\n    envp = (ctypes.c_char_p * 1)(None)\n    libc.execve(b'/usr/bin/date', argv, envp)\n    os._exit(1)\nos.waitpid(pid, 0)",
        "notebook.non_python_exec",
        "date",
    ),
    (
        "import shutil, os, subprocess\nshutil.copy('/usr/bin/true', '/tmp/nbg-dropped')\nos.chmod('/tmp/nbg-dropped', 0o755)\nsubprocess.run(['/tmp/nbg-dropped'])",
        "notebook.exec_from_writable_path",
        "/tmp/nbg-dropped",
    ),
    ("", "notebook.masqueraded_binary", "/tmp/nbg-dropped"),
    (
        "import os, subprocess\nfd = os.memfd_create('payload')\nos.write(fd, open('/usr/bin/true', 'rb').read())\nsubprocess.run([f'/proc/self/fd/{fd}'], pass_fds=(fd,))",
        "notebook.fileless_exec",
        "/proc/self/fd/",
    ),
    ("import subprocess\nsubprocess.run(['/lib64/ld-linux-x86-64.so.2', '/usr/bin/true'])", "notebook.loader_invocation", "ld-linux"),
    (
        "import os, subprocess\nos.path.lexists('/tmp/nbg-link') and os.unlink('/tmp/nbg-link')\nos.symlink('/usr/bin/true', '/tmp/nbg-link')\nsubprocess.run(['/tmp/nbg-link'])",
        "notebook.masqueraded_binary",
        "/tmp/nbg-link",
    ),
    ("import subprocess\nsubprocess.run(['apt-get', '--version'], capture_output=True)", "notebook.package_manager", "apt-get"),
    ("import subprocess\nsubprocess.run(['curl', '--version'], capture_output=True)", "notebook.network_tool", "curl"),
    (
        "import socket, subprocess\na, b = socket.socketpair()\nsubprocess.run(['/bin/sh', '-c', 'true'], stdin=a, stdout=a)",
        "notebook.reverse_shell",
        "sh",
    ),
];

const BENIGN: &[&str] = &[
    "import platform\nplatform.platform(); platform.processor(); platform.machine()",
    "import ctypes.util\nctypes.util.find_library('c'); ctypes.util.find_library('m')",
    "import uuid\nuuid.uuid1(); uuid.getnode()",
    "import multiprocessing as mp\nwith mp.get_context('spawn').Pool(2) as p:\n    print(p.map(abs, [-1, -2]))",
    "import multiprocessing as mp\nwith mp.get_context('forkserver').Pool(2) as p:\n    print(p.map(abs, [-3, -4]))",
    "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'print(1)'], check=True)",
    "get_ipython().run_line_magic('pip', '--version')",
    "import locale, socket, getpass, shutil\nlocale.getpreferredencoding(); socket.gethostname(); getpass.getuser(); shutil.which('git')",
    "import json, csv, sqlite3\nsqlite3.connect(':memory:').execute('select 1').fetchall()",
    // A user's own script with `#!/usr/bin/env python3`, run by subprocess: Python running the
    // user's Python (env execs the interpreter).
    "import os, subprocess, tempfile\np = os.path.join(tempfile.mkdtemp(), 'tool.py')\nopen(p, 'w').write('#!/usr/bin/env python3\\nprint(40 + 2)\\n')\nos.chmod(p, 0o755)\nprint(subprocess.run([p, 'arg'], capture_output=True, text=True, env={'PATH': '/usr/bin:/bin'}).stdout)",
    // joblib/loky's physical core count (scikit-learn's n_jobs=-1).
    "import subprocess\nsubprocess.run(['lscpu', '--parse=core'], capture_output=True)",
];

#[test]
fn attack_cells_raise_their_rules_with_user_notebook_and_lineage() {
    privileged!();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    let cells: Vec<&str> = ATTACKS.iter().map(|a| a.0).filter(|c| !c.is_empty()).collect();
    let results = run_notebook(&cg, NOTEBOOK, TOKEN, &cells).unwrap();
    assert!(results.iter().all(|r| r.status == "ok"), "monitor mode changes nothing: {results:?}");

    // A process entering the notebook from outside (like kubectl exec or nsenter): a shell
    // outside the notebook starts one that joins its cgroup and execs.
    let procs = cg.path.join("cgroup.procs");
    let st = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("/bin/sh -c 'echo 0 > {}; exec /usr/bin/true intruder-marker'; true", procs.display()))
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = guard.log();
    let alerts = mine(guard.stop().unwrap(), &user);

    let mut detected = 0;
    for (cell, rule, exe) in ATTACKS {
        let hit =
            alerts.iter().find(|a| a["rule"] == *rule && field(a, "proc.exepath").as_str().unwrap_or("").contains(exe));
        let Some(a) = hit else {
            panic!("no {rule} alert for {exe} (cell {cell:?}); alerts:\n{}\nlog:\n{log}", summary(&alerts));
        };
        detected += 1;
        assert_eq!(field(a, "jupyterhub.user"), user.as_str());
        assert_eq!(field(a, "notebook.path"), NOTEBOOK, "{a}");
        assert_eq!(field(a, "guard.action"), "alert");
        assert!(field(a, "proc.pexepath").is_string(), "lineage: {a}");
        assert!(a["tags"].as_array().unwrap().iter().any(|t| t.as_str().unwrap().starts_with('T')), "MITRE tag");
    }
    let intruder_alert = alerts
        .iter()
        .find(|a| {
            a["rule"] == "notebook.unknown_lineage"
                && field(a, "proc.cmdline").as_str().is_some_and(|c| c.contains("intruder-marker"))
        })
        .unwrap_or_else(|| panic!("no unknown_lineage alert for the intruder:\n{}", summary(&alerts)));
    assert_eq!(field(intruder_alert, "jupyterhub.user"), user.as_str());
    detected += 1;

    // Lineage on the shell spawned by os.system: its parent is the kernel.
    let sh = alerts
        .iter()
        .find(|a| field(a, "proc.cmdline").as_str().is_some_and(|c| c.contains("id > /dev/null")))
        .expect("os.system shell alert");
    assert!(field(sh, "proc.pcmdline").as_str().unwrap().contains("ipykernel_launcher"), "{sh}");

    // Every alert has the contract's fields; the kernel's API token never appears.
    for a in &alerts {
        for k in guard::detect::alert::FIELDS {
            assert!(a["output_fields"].get(*k).is_some(), "{k} missing in {a}");
        }
        assert!(!a.to_string().contains(TOKEN));
    }
    eprintln!("detection: {detected}/{} attack behaviours alerted", ATTACKS.len() + 1);
}

#[test]
fn benign_session_raises_no_alert() {
    privileged!();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    let results = run_notebook(&cg, NOTEBOOK, TOKEN, BENIGN).unwrap();
    assert!(results.iter().all(|r| r.status == "ok"), "{results:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = guard.log();
    let alerts = mine(guard.stop().unwrap(), &user);
    assert!(alerts.is_empty(), "false positives:\n{}\nlog:\n{log}", summary(&alerts));
    assert!(log.contains("watching notebook cgroup"), "the notebook was watched:\n{log}");
    eprintln!("false positives: 0 in {} benign cells (plus kernel start-up)", BENIGN.len());
}

#[test]
fn enforce_mode_kills_forbidden_execs_and_the_kernel_answers() {
    privileged!();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(Some(&user)), &[]).unwrap();
    let cells = [
        // The refusal's notice reaches the cell while it still runs (ipykernel forwards the
        // kernel's stderr into the running cell).
        "import os, time\nprint('rc', os.system('echo FORBIDDEN-1'))\ntime.sleep(1)",
        "import subprocess\nr = subprocess.run(['/bin/echo', 'FORBIDDEN-2'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout)",
        "get_ipython().run_cell_magic('bash', '', 'echo FORBIDDEN-3\\n')",
        "import os\npid = os.posix_spawn('/bin/echo', ['echo', 'FORBIDDEN-4'], os.environ)\nprint('status', os.waitpid(pid, 0)[1])",
        // Benign work still runs under enforcement: helpers, Python children, %pip.
        "import platform, subprocess, sys\nplatform.processor()\nprint(subprocess.run([sys.executable, '-c', 'print(21*2)'], capture_output=True, text=True).stdout)",
        "get_ipython().run_line_magic('pip', '--version')",
        // A %pip-shaped shell may run only Python: anything else it execs dies.
        "import subprocess\nr = subprocess.run(['/bin/sh', '-c', '/bin/echo -m pip FORBIDDEN-5'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout)",
        // A user's `#!/usr/bin/env python3` script is Python, under enforcement too.
        "import os, subprocess, tempfile\np = os.path.join(tempfile.mkdtemp(), 'tool.py')\nopen(p, 'w').write('#!/usr/bin/env python3\\nprint(40 + 2)\\n')\nos.chmod(p, 0o755)\nprint(subprocess.run([p], capture_output=True, text=True, env={'PATH': '/usr/bin:/bin'}).stdout)",
        "print('still', 'alive', 1 + 1)",
    ];
    let results = run_notebook(&cg, NOTEBOOK, TOKEN, &cells).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = guard.log();
    let alerts = mine(guard.stop().unwrap(), &user);

    let all_out: String = results.iter().map(|r| r.stdout.clone()).collect::<Vec<_>>().join("\n");
    for n in 1..=5 {
        assert!(!all_out.contains(&format!("FORBIDDEN-{n}")), "FORBIDDEN-{n} ran: {results:?}\nlog:\n{log}");
    }
    assert!(results[0].stdout.contains("rc "), "os.system returned: {results:?}");
    let notice =
        results[0].notices.iter().find(|l| l.starts_with("[notebook-guard] Blocked by this hub's policy: running `"));
    let notice = notice.unwrap_or_else(|| panic!("no notice in the cell: {results:?}\nlog:\n{log}"));
    assert!(
        notice.contains("(notebook.non_python_exec)")
            && notice.ends_with("Ask your hub's administrators if you need it."),
        "{notice}"
    );
    assert!(results[4].stdout.contains("42"), "Python children still run: {results:?}");
    assert!(results[5].stdout.contains("pip "), "%pip still works: {results:?}");
    assert!(results[7].stdout.contains("42"), "an env-shebang Python script runs: {results:?}");
    assert_eq!(results.last().unwrap().stdout.trim(), "still alive 2", "the kernel answers: {results:?}");

    let killed: Vec<&Value> = alerts.iter().filter(|a| field(a, "guard.action") == "killed").collect();
    assert!(killed.len() >= 4, "killed alerts:\n{}\nlog:\n{log}", summary(&alerts));
    for a in &killed {
        assert_eq!(field(a, "jupyterhub.user"), user.as_str());
        assert_eq!(field(a, "notebook.path"), NOTEBOOK);
    }
    let by_exe: BTreeMap<String, usize> = killed.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(field(a, "proc.exepath").as_str().unwrap_or("").to_string()).or_default() += 1;
        m
    });
    assert!(by_exe.keys().any(|k| k.ends_with("echo")), "{by_exe:?}");
    assert!(by_exe.keys().any(|k| k.ends_with("bash")), "{by_exe:?}");
}

/// This test's alerts (each guard sees every test's notebooks).
/// The user's alerts on what ran (posture findings, about how these test kernels were
/// started, are `tests/posture.rs`'s).
fn mine(alerts: Vec<Value>, user: &str) -> Vec<Value> {
    alerts
        .into_iter()
        .filter(|a| field(a, "jupyterhub.user") == user)
        .filter(|a| !a["rule"].as_str().is_some_and(|r| r.starts_with("posture.")))
        .collect()
}

fn summary(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|a| format!("  {} {} {}", a["rule"], field(a, "guard.action"), a["output"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn exec_in_a_cgroup_created_a_moment_ago_is_attributed() {
    privileged!();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    // Created after the guard started, used at once: no scan has seen it yet.
    let (cg, user) = TestCgroup::tljh().unwrap();
    let pid = spawn_in(
        &cg,
        Exec::Path(std::path::Path::new("/usr/bin/curl")),
        &[std::ffi::OsStr::new("curl"), std::ffi::OsStr::new("--version")],
    )
    .unwrap();
    wait_ok(pid).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alerts = mine(guard.stop().unwrap(), &user);
    let a =
        alerts.iter().find(|a| a["rule"] == "notebook.network_tool").unwrap_or_else(|| panic!("{}", summary(&alerts)));
    assert_eq!(field(a, "proc.pid"), pid.as_raw());
    assert_eq!(field(a, "jupyterhub.source"), "tljh");
}

#[test]
fn enforcement_survives_an_agent_restart_and_is_adopted() {
    privileged!();
    // Programs and maps are pinned in bpffs: when the agent stops, exec is still judged; the
    // next agent replaces the pinned programs with its own instead of adding a second set.
    let (cg, user) = TestCgroup::tljh().unwrap();
    let code = "import subprocess, sys\nfor line in sys.stdin:\n    print(subprocess.run(['/bin/echo', 'x'], capture_output=True).returncode, flush=True)\n";
    let mut child = std::process::Command::new(test_python())
        .args(["-c", code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(cg.path.join("cgroup.procs"), child.id().to_string()).unwrap();
    let a = GuardProcess::start(&policy(Some(&user)), &[]).unwrap();
    let pins = a.pin_dir.clone();
    use std::io::{BufRead, Write};
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // One answer; with `until`, answers until that one comes (10 s at most).
    let mut ask = |stdin: &mut std::process::ChildStdin, until: Option<&str>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            writeln!(stdin, "go").unwrap();
            let got = out.next().unwrap().unwrap();
            match until {
                Some(want) if got.trim() != want && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                _ => return got,
            }
        }
    };
    // Python started before the guard: marked once its cgroup is enforced.
    let got = ask(&mut stdin, Some("-9"));
    assert_eq!(got.trim(), "-9", "under the agent, /bin/echo is killed:\n{}", a.log());
    let a_ids = a.program_ids();
    assert!(a_ids.len() >= 7, "programs: {a_ids:?}");
    a.stop_keep_pins().unwrap();
    assert_eq!(ask(&mut stdin, None).trim(), "-9", "the agent is gone, enforcement is not");

    let b = GuardProcess::start_pinned(&policy(Some(&user)), &[], &[], pins.clone()).unwrap();
    assert!(b.log().contains("adopting"), "{}", b.log());
    let loaded: std::collections::HashSet<u32> =
        aya::programs::loaded_programs().filter_map(|p| p.ok()).map(|p| p.id()).collect();
    let b_ids = b.program_ids();
    assert!(b_ids.iter().all(|id| loaded.contains(id)), "the new agent's programs run");
    assert!(a_ids.iter().all(|id| !loaded.contains(id)), "the old agent's programs are gone, not duplicated");
    assert_eq!(ask(&mut stdin, None).trim(), "-9", "still enforced by the adopting agent");
    b.stop_keep_pins().unwrap();

    // Restarted with a policy that no longer enforces this user: the adopted enforcement
    // comes off once discovery sees the notebook under the new policy.
    let c = GuardProcess::start_pinned(&policy(None), &[], &[], pins.clone()).unwrap();
    assert!(c.log().contains("adopting"), "{}", c.log());
    let got = ask(&mut stdin, Some("0"));
    assert_eq!(got.trim(), "0", "monitor after the restart, but the old enforcement stayed:\n{}", c.log());
    c.stop().unwrap();
    assert_eq!(ask(&mut stdin, None).trim(), "0", "after cleanup, exec is not judged");
    drop(stdin);
    let _ = child.wait();
}

#[test]
fn health_readiness_and_metrics_are_served() {
    privileged!();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &["--listen", &addr]).unwrap();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Loss and error counters exist from the start, at 0 until they count: a dashboard tells
    // "none" from "not exported".
    let (_, fresh) = http_get(&addr, "/metrics");
    for family in [
        "guard_events_lost_total{stage=\"kernel\",type=\"exec\"} ",
        "guard_events_lost_total{stage=\"kernel\",type=\"egress\"} ",
        "guard_events_lost_total{stage=\"queue\",type=\"any\"} ",
        "guard_errors_total{stage=\"placement\"} 0",
        "guard_errors_total{stage=\"decode\"} 0",
        "guard_sink_errors_total{sink=\"file:",
    ] {
        assert!(fresh.contains(family), "{family} missing on a fresh agent:\n{fresh}");
    }
    let pid = spawn_in(
        &cg,
        Exec::Path(Path::new("/usr/bin/curl")),
        &[std::ffi::OsStr::new("curl"), std::ffi::OsStr::new("--version")],
    )
    .unwrap();
    wait_ok(pid).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert!(text.contains("guard_events_total{type=\"exec\"}"), "{text}");
    assert!(text.contains("guard_alerts_total{rule=\"notebook.network_tool\",action=\"alert\"}"), "{text}");
    assert!(text.contains("guard_notebook_cgroups_watched"), "{text}");
    assert!(text.contains("guard_build_info{"), "{text}");
    assert!(text.contains("guard_ring_buffer_fill_ratio "), "{text}");
    assert_eq!(http_get(&addr, "/nope").0, 404);
    let alerts = mine(guard.stop().unwrap(), &user);
    assert!(alerts.iter().any(|a| a["rule"] == "notebook.network_tool"));
}

/// Runs a Python script named `name` (with `#!` to the test venv) inside `cg`: a shell moves
/// itself into the cgroup and execs it, as a spawner would. Returns (exit status, stdout).
fn run_server_script(cg: &TestCgroup, name: &str, body: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = TempDir::new("server").unwrap();
    let script = dir.0.join(name);
    std::fs::write(&script, format!("#!{}\n{body}", test_python().display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo $$ > {}; exec {}", cg.path.join("cgroup.procs").display(), script.display()))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A "server" that opens a terminal the way jupyter_server does: `bash -l` as its child.
const SERVER: &str = "import subprocess, time\ntime.sleep(0.7)\nr = subprocess.run(['/bin/bash', '-lc', 'echo TERMINAL-RAN; /usr/bin/id -u'], capture_output=True, text=True)\nprint('rc', r.returncode, r.stdout.replace(chr(10), ' '))\n";

#[test]
fn terminals_are_a_named_allowance() {
    privileged!();
    // Monitor, terminals off: the shell is reported as a terminal.
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    let (_, out) = run_server_script(&cg, "jupyterhub-singleuser", SERVER, &[]);
    assert!(out.contains("TERMINAL-RAN"), "monitor changes nothing: {out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alerts = mine(guard.stop().unwrap(), &user);
    assert!(
        alerts.iter().any(|a| a["rule"] == "notebook.terminal_shell" && field(a, "guard.action") == "alert"),
        "{}",
        summary(&alerts)
    );

    // Enforce, terminals off: the terminal's shell is killed before it runs.
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(Some(&user)), &[]).unwrap();
    let (_, out) = run_server_script(&cg, "jupyterhub-singleuser", SERVER, &[]);
    assert!(!out.contains("TERMINAL-RAN") && out.contains("rc -9"), "{out}\n{}", guard.log());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alerts = mine(guard.stop().unwrap(), &user);
    assert!(
        alerts.iter().any(|a| a["rule"] == "notebook.terminal_shell" && field(a, "guard.action") == "killed"),
        "{}",
        summary(&alerts)
    );

    // Enforce, terminals on: the terminal and what it runs are allowed, silently.
    let (cg, user) = TestCgroup::tljh().unwrap();
    let p =
        policy(Some(&user)).replace("    mode: enforce\n", "    mode: enforce\n    allowances: {terminals: true}\n");
    let guard = GuardProcess::start(&p, &[]).unwrap();
    let (_, out) = run_server_script(&cg, "jupyterhub-singleuser", SERVER, &[]);
    assert!(out.contains("TERMINAL-RAN") && out.contains("rc 0"), "{out}\n{}", guard.log());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alerts = mine(guard.stop().unwrap(), &user);
    assert!(alerts.is_empty(), "{}", summary(&alerts));
}

#[test]
fn policy_reloads_atomically_and_bad_policies_are_rejected() {
    privileged!();
    // LocalProcessSpawner servers of the tests alongside would get scopes, which keep process
    // marks on in every mode: this guard leaves them alone, so "nothing enforced" is exact.
    let policy = |u: Option<&str>| format!("{}discovery:\n  local_process: false\n", policy(u));
    use std::io::{BufRead, Write};
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    let curl = |marker: &str| {
        let argv = [std::ffi::OsStr::new("curl"), std::ffi::OsStr::new("--version"), std::ffi::OsStr::new(marker)];
        let pid = spawn_in(&cg, Exec::Path(Path::new("/usr/bin/curl")), &argv).unwrap();
        wait_ok(pid).unwrap();
    };
    // A Python process of the notebook that runs /bin/echo on demand.
    let code = "import subprocess, sys\nfor line in sys.stdin:\n    print(subprocess.run(['/bin/echo', 'x'], capture_output=True).returncode, flush=True)\n";
    let mut py = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; exec {} -c \"{code}\"",
            cg.path.join("cgroup.procs").display(),
            test_python().display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = py.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap()).lines();
    let mut echo = || {
        writeln!(stdin, "go").unwrap();
        out.next().unwrap().unwrap()
    };
    assert_eq!(echo().trim(), "0", "monitor: echo runs");
    curl("before-reload");

    // A policy with a typo: rejected with an alert, the old one stays.
    std::fs::write(&guard.config, format!("{}allowances:\n  terminal: true\n", policy(None))).unwrap();
    guard.signal(nix::sys::signal::Signal::SIGHUP);
    let wait_log = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !guard.log().contains(what) {
            assert!(std::time::Instant::now() < deadline, "no {what:?} in:\n{}", guard.log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_log("policy rejected");
    curl("after-rejected");
    assert_eq!(echo().trim(), "0");

    // A good policy, picked up by the file watch (no signal): enforce this user, silence a rule.
    std::fs::write(&guard.config, format!("{}rules:\n  disabled: [notebook.network_tool]\n", policy(Some(&user))))
        .unwrap();
    wait_log("policy reloaded");
    curl("after-reload");
    assert_eq!(echo().trim(), "-9", "enforced after the reload:\n{}", guard.log());

    // Back to monitor: nothing is enforced, so the kernel's per-process marks are dropped (it
    // stops keeping them, and a stale one could name a reused pid)...
    let reloads = |g: &GuardProcess| g.log().matches("policy reloaded").count();
    let before = reloads(&guard);
    std::fs::write(&guard.config, policy(None)).unwrap();
    guard.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reloads(&guard) == before {
        assert!(std::time::Instant::now() < deadline, "no second reload in:\n{}", guard.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(echo().trim(), "0", "monitor again: echo runs");
    let entries = |map: &str| -> Vec<(u32, u32)> {
        let maps = guard.pin_dir.join(format!("maps-v{}", guard_abi::PIN_LAYOUT));
        let data = aya::maps::MapData::from_pin(maps.join(map)).unwrap();
        let m: aya::maps::HashMap<_, u32, u32> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
        m.iter().flatten().collect()
    };
    assert_eq!(
        (entries("MARKS"), entries("SERVERS")),
        (vec![], vec![]),
        "marks and servers kept with nothing enforced"
    );
    // ...and enforcing again marks the Python that is still running.
    let before = reloads(&guard);
    std::fs::write(&guard.config, policy(Some(&user))).unwrap();
    guard.signal(nix::sys::signal::Signal::SIGHUP);
    while reloads(&guard) == before {
        assert!(std::time::Instant::now() < deadline, "no third reload in:\n{}", guard.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(echo().trim(), "-9", "enforced again, the running Python re-marked:\n{}", guard.log());
    drop(stdin);
    let _ = py.wait();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let all = guard.stop().unwrap();
    let alerts = mine(all.clone(), &user);
    let tool = |m: &str| {
        alerts.iter().any(|a| {
            a["rule"] == "notebook.network_tool" && field(a, "proc.cmdline").as_str().is_some_and(|c| c.contains(m))
        })
    };
    assert!(tool("before-reload") && tool("after-rejected"), "{}", summary(&alerts));
    assert!(!tool("after-reload"), "the rule is disabled by the new policy");
    let rejected = all.iter().find(|a| a["rule"] == "guard.policy_rejected").expect("a rejection alert");
    assert!(rejected["output"].as_str().unwrap().contains("allowances.terminal"), "{rejected}");
    assert!(all.iter().any(|a| a["rule"] == "guard.policy_reloaded"));
    assert!(alerts.iter().any(|a| field(a, "guard.action") == "killed"));
}

#[test]
fn kernels_and_local_servers_running_before_the_agent_carry_their_notebook() {
    privileged!();
    // Every DaemonSet rollout meets notebooks that are already running.
    let (cg, user) = TestCgroup::tljh().unwrap();
    let dir = TempDir::new("predates").unwrap();
    let (ready, go) = (dir.0.join("ready"), dir.0.join("go"));
    let cell = "import os\nos.system('echo ' + os.environ['JUPYTERHUB_API_TOKEN'] + ' > /dev/null')";
    let spec = serde_json::json!({"notebook": NOTEBOOK, "cells": [cell], "ready_file": ready, "wait_for": go});
    let kernel = std::thread::spawn(move || run_notebook_spec(&cg, None, TOKEN, spec));
    // A LocalProcessSpawner server in the hub's cgroup, also up before the agent.
    let hub = TestCgroup::new_under(Path::new("system.slice"), "jupyterhub-test").unwrap();
    let go_path = go.display().to_string();
    let server = format!(
        "import os, subprocess, time\nwhile not os.path.exists('{go_path}'):\n    time.sleep(0.02)\nsubprocess.run(['curl', '--version'], capture_output=True)\n"
    );
    let local = std::thread::spawn(move || {
        run_server_script(&hub, "jupyterhub-singleuser", &server, &[("JUPYTERHUB_USER", "erin-predates")])
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "the kernel never answered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    std::fs::write(&go, "").unwrap();
    let results = kernel.join().unwrap().unwrap();
    assert_eq!(results[0].status, "ok", "{results:?}");
    assert_eq!(local.join().unwrap().0, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let all = guard.stop().unwrap();
    let alerts = mine(all.clone(), &user);
    let shell = alerts
        .iter()
        .find(|a| {
            a["rule"] == "notebook.non_python_exec"
                && field(a, "proc.cmdline").as_str().is_some_and(|c| c.starts_with("sh -c echo"))
        })
        .unwrap_or_else(|| panic!("no alert for the cell's shell:\n{}", summary(&alerts)));
    assert_eq!(field(shell, "notebook.path"), NOTEBOOK, "{shell:#}");
    assert!(field(shell, "notebook.kernel_id").as_str().is_some_and(|k| !k.is_empty()), "{shell:#}");
    assert!(!serde_json::to_string(&alerts).unwrap().contains(TOKEN), "the seeded kernel's token is masked");
    let erin = all
        .iter()
        .find(|a| field(a, "jupyterhub.user") == "erin-predates" && a["rule"] == "notebook.network_tool")
        .unwrap_or_else(|| panic!("no alert for the LocalProcessSpawner server:\n{}", summary(&all)));
    assert_eq!(field(erin, "jupyterhub.source"), "localprocessspawner");
}

#[test]
fn policy_suggest_turns_a_noisy_monitoring_period_into_a_quiet_policy() {
    privileged!();
    // Ordinary calls the default policy does not know: a checksum, a file's size.
    let cells = [
        "import subprocess\nsubprocess.run(['cksum', '/etc/hostname'], capture_output=True)",
        "import subprocess\nsubprocess.run(['stat', '-c', '%s', '/etc/hostname'], capture_output=True)",
    ];
    let noisy = |policy: &str| {
        let (cg, user) = TestCgroup::tljh().unwrap();
        let guard = GuardProcess::start(policy, &[]).unwrap();
        let results = run_notebook(&cg, NOTEBOOK, TOKEN, &cells).unwrap();
        assert!(results.iter().all(|r| r.status == "ok"), "{results:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        mine(guard.stop().unwrap(), &user)
    };
    let before = noisy(&policy(None));
    let execs = |alerts: &[Value]| -> Vec<String> {
        alerts
            .iter()
            .filter(|a| a["rule"] == "notebook.non_python_exec")
            .filter_map(|a| field(a, "proc.exepath").as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(execs(&before).len(), 2, "the monitoring period was noisy: {}", summary(&before));
    let dir = TempDir::new("suggest").unwrap();
    let log = dir.0.join("alerts.json");
    std::fs::write(&log, before.iter().map(|a| a.to_string() + "\n").collect::<String>()).unwrap();
    let fragment = dir.0.join("suggested.yaml");
    let out = std::process::Command::new(guard_bin())
        .args(["policy", "suggest"])
        .arg(&log)
        .arg("-o")
        .arg(&fragment)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&fragment).unwrap();
    assert!(text.contains("suggested-cksum") && text.contains("suggested-stat"), "{text}");
    // The operator keeps it: the test's own policy plus the proposed helpers.
    let kept = format!("{}\n{text}", policy(None));
    let file = dir.0.join("kept.yaml");
    std::fs::write(&file, &kept).unwrap();
    let check = std::process::Command::new(guard_bin()).args(["policy", "check"]).arg(&file).output().unwrap();
    assert!(check.status.success(), "{}\n{kept}", String::from_utf8_lossy(&check.stdout));
    let after = noisy(&kept);
    assert!(execs(&after).is_empty(), "still noisy under the suggested policy: {}", summary(&after));
}

/// One incident, one alert: `os.system("id; whoami")` is one alert for the shell, and what
/// the shell ran comes once, as a follow-up naming the commands; a more specific rule under
/// the same shell (a network tool) still goes out on its own, with the incident's id.
#[test]
fn what_a_flagged_shell_runs_is_folded_into_its_incident() {
    privileged!();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let guard = GuardProcess::start(&policy(None), &[]).unwrap();
    let cells = ["import os\nos.system('id > /dev/null; whoami > /dev/null; curl --version > /dev/null')"];
    let results = run_notebook(&cg, NOTEBOOK, TOKEN, &cells).unwrap();
    assert!(results.iter().all(|r| r.status == "ok"), "{results:?}");
    let alerts = mine(guard.stop().unwrap(), &user);
    let generic: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "notebook.non_python_exec").collect();
    assert_eq!(generic.len(), 2, "the shell, then one follow-up:\n{}", summary(&alerts));
    let (first, follow) = (generic[0], generic[1]);
    assert!(field(first, "proc.cmdline").as_str().unwrap().starts_with("sh -c id"), "{first}");
    assert!(field(first, "guard.count").is_null(), "{first}");
    let incident = field(first, "guard.incident");
    assert!(incident.is_u64(), "{first}");
    assert_eq!(field(follow, "guard.incident"), incident);
    assert_eq!(field(follow, "guard.chain"), &serde_json::json!(["id", "whoami"]), "{follow}");
    assert_eq!(field(follow, "guard.count"), 2);
    let curl = alerts.iter().find(|a| a["rule"] == "notebook.network_tool").expect("curl still alerts on its own");
    assert_eq!(field(curl, "guard.incident"), incident, "{curl}");
}

/// A miner under a harmless name is known by its command line; the operator's own patterns
/// come from a file whose contents never reach an alert or the log.
#[test]
fn a_renamed_miner_is_known_by_its_command_line() {
    privileged!();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let dir = TempDir::new("mining").unwrap();
    let patterns = dir.0.join("patterns");
    std::fs::write(&patterns, "# the hub's own list\nhidden-pool-9f3e.example\n").unwrap();
    let policy = format!("{}mining:\n  patterns_file: {}\n", policy(None), patterns.display());
    let guard = GuardProcess::start(&policy, &[]).unwrap();
    let wallet = format!("4{}", "B".repeat(94));
    let cell = format!(
        "import os, shutil, subprocess, tempfile\nd = tempfile.mkdtemp()\nm = os.path.join(d, 'kworker')\n\
         shutil.copy('/bin/true', m)\n\
         subprocess.run([m, '-o', 'pool.example.org:443', '-u', '{wallet}.w1', '--donate-level', '1'])\n\
         subprocess.run([m, '--url', 'hidden-pool-9f3e.example:80'])\n\
         subprocess.run(['/bin/true', 'stratum+tcp://198.51.100.8:3333'])\nprint('done')"
    );
    let results = run_notebook(&cg, NOTEBOOK, TOKEN, &[cell.as_str()]).unwrap();
    assert_eq!(results[0].stdout.trim(), "done", "{results:?}");
    let log = guard.log();
    let alerts = mine(guard.stop().unwrap(), &user);
    let mining: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "notebook.crypto_mining").collect();
    let ids: Vec<&str> = mining.iter().filter_map(|a| field(a, "guard.detail").as_str()).collect();
    assert!(ids.contains(&"pattern=builtin:donate-level"), "{ids:?}\n{}", summary(&alerts));
    assert!(ids.contains(&"pattern=operator:2"), "{ids:?}");
    assert!(ids.contains(&"pattern=builtin:stratum-url"), "{ids:?}");
    for a in &mining {
        assert_eq!(a["priority"], "Critical");
        assert!(a["tags"].as_array().unwrap().iter().any(|t| t == "T1496"), "{a}");
        assert_eq!(field(a, "notebook.path"), NOTEBOOK);
    }
    // The reason names the pattern by its line; its text is never the reason, nor logged.
    assert!(mining.iter().all(|a| !field(a, "guard.detail").as_str().unwrap().contains("hidden-pool")));
    assert!(!log.contains("hidden-pool-9f3e"), "the operator's patterns leaked into the log");
}
