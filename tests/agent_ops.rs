//! The agent as an operator runs it, with real notebooks: restarted and adopting its pinned
//! programs, served health and metrics, policies reloaded (or rejected) live, `policy suggest`,
//! and notebooks already running when it starts.

use guard_tests::{
    notebook::{mine, policy, run_server_script, summary, NOTEBOOK, TOKEN},
    *,
};
use serde_json::Value;
use std::path::Path;

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
