//! Shell-bypass detection and enforcement on a real IPython kernel (jupyter_client), started
//! inside a TLJH-shaped cgroup (`system.slice/jupyter-<user>.service`) with the real agent.

use std::collections::BTreeMap;

use guard_tests::{
    notebook::{mine, policy, run_server_script, summary, NOTEBOOK, TOKEN},
    *,
};
use serde_json::Value;

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
