//! `guard run --events` end to end: the real binary, a real cgroup, a real shell.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::*;

/// Reads the guard's piped stderr until it is attached and running; the rest of its log.
fn wait_running(guard: &mut std::process::Child) -> std::io::Lines<BufReader<std::process::ChildStderr>> {
    let mut lines = BufReader::new(guard.stderr.take().expect("stderr piped")).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.next().expect("guard exited before it was running").unwrap().contains("guard running") {
        assert!(Instant::now() < deadline, "guard did not start");
    }
    lines
}

/// `guard run --no-pin --events` watching `cg` (plus `extra`), started and running, its log
/// drained in the background.
fn start_events_guard(extra: &[&str], cg: &TestCgroup) -> std::process::Child {
    let mut guard = Command::new(guard_bin())
        .args(["run", "--no-pin", "--events"])
        .args(extra)
        .arg("--watch-cgroup")
        .arg(&cg.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guard (built by cargo xtask test)");
    let lines = wait_running(&mut guard);
    std::thread::spawn(move || for _ in lines {});
    guard
}

/// SIGTERM, a clean exit, and the event records it printed.
fn stop_events_guard(guard: std::process::Child) -> Vec<serde_json::Value> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = guard.wait_with_output().unwrap();
    assert!(out.status.success(), "guard exits 0 on SIGTERM: {:?}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect()
}

#[test]
fn guard_run_events_prints_exec_with_lineage_and_stops_cleanly() {
    privileged!();
    let cg = TestCgroup::new("agent").unwrap();
    let guard = start_events_guard(&[], &cg);

    let sh = spawn_in(
        &cg,
        Exec::Path(Path::new("/bin/sh")),
        &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new("/bin/true lineage-marker; true")],
    )
    .unwrap();
    wait_ok(sh).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let records = stop_events_guard(guard);
    let execs: Vec<_> = records.iter().filter(|r| r["type"] == "exec").collect();
    let shell = execs.iter().find(|r| r["pid"] == sh.as_raw()).expect("the shell's exec");
    assert_eq!(shell["filename"], "/bin/sh");
    assert_eq!(shell["cgroup"], cg.rel.to_str().unwrap());
    assert_eq!(shell["cgroup_id"], cg.id);
    assert_eq!(shell["ppid"], std::process::id());

    let t = execs.iter().find(|r| r["argv"][1] == "lineage-marker").expect("the /bin/true exec");
    assert_eq!(t["filename"], "/bin/true");
    assert_eq!(t["ppid"], sh.as_raw());
    assert_eq!(t["parent"]["pid"], sh.as_raw());
    assert_eq!(t["parent"]["exe"], "/bin/sh");
    assert_eq!(t["parent"]["cmdline"], "sh -c /bin/true lineage-marker; true");
    assert!(t["time"].as_str().unwrap().ends_with('Z'));
    assert!(records.iter().all(|r| r["type"] != "lost"), "no loss at this rate");
}

#[test]
fn guard_keeps_guarding_after_its_log_pipe_closes() {
    privileged!();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let dir = TempDir::new("logpipe").unwrap();
    let alerts = dir.0.join("alerts.json");
    let mut guard = Command::new(guard_bin())
        .args(["run", "--no-pin", "--output"])
        .arg(format!("file:{}", alerts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guard (built by cargo xtask test)");
    // The log shipper dies: every later log line hits a closed pipe.
    drop(wait_running(&mut guard));

    let curl =
        spawn_in(&cg, Exec::Path(Path::new("/usr/bin/curl")), &[OsStr::new("curl"), OsStr::new("--version")]).unwrap();
    wait_ok(curl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let alert = loop {
        let text = std::fs::read_to_string(&alerts).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|a| a["output_fields"]["proc.pid"] == curl.as_raw())
        {
            break a;
        }
        assert!(guard.try_wait().unwrap().is_none(), "guard died once its stderr closed");
        assert!(Instant::now() < deadline, "no alert for curl after the log pipe closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(alert["output_fields"]["jupyterhub.user"], user.as_str());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_within(&mut guard, Duration::from_secs(30)).unwrap();
    if status.is_none() {
        let _ = guard.kill();
    }
    assert!(status.is_some_and(|s| s.success()), "guard stops cleanly on SIGINT with its stderr closed: {status:?}");
}

/// A record after a quiet spell wakes the agent at once, even when the record before it came
/// only just before: a notebook running commands one after another has each one's exec follow
/// the last one's exit within a millisecond. The agent used to switch to its timer after any
/// record, so that exec waited for the first timed look (a quarter of the poll: 250 ms here).
#[test]
fn an_exec_right_after_a_quiet_spell_is_delivered_without_waiting_for_the_timer() {
    privileged!();
    let cg = TestCgroup::new("sparse").unwrap();
    // Only this test's records: a notebook another test runs meanwhile would make them dense.
    let dir = TempDir::new("sparse").unwrap();
    let config = only_watched_cgroups(&dir);
    let mut guard = start_events_guard(&["--poll-ms", "1000", "--config", &config], &cg);
    let stdout = guard.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });

    // A quiet spell longer than the poll: the sleep's exec, then nothing until its exit.
    let quiet = spawn_in(&cg, Exec::Path(Path::new("/bin/sleep")), &[OsStr::new("sleep"), OsStr::new("1.5")]).unwrap();
    wait_ok(quiet).unwrap();
    let spawned = Instant::now();
    let next =
        spawn_in(&cg, Exec::Path(Path::new("/bin/true")), &[OsStr::new("true"), OsStr::new("after-quiet")]).unwrap();
    wait_ok(next).unwrap();
    let arrived = loop {
        let (at, line) = rx.recv_timeout(Duration::from_secs(5)).expect("the exec after the quiet spell is reported");
        let r: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
        if r["type"] == "exec" && r["argv"][1] == "after-quiet" {
            break at;
        }
    };
    let waited = arrived - spawned;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(guard.wait().unwrap().success(), "guard exits 0 on SIGTERM");
    reader.join().unwrap();
    assert!(waited < Duration::from_millis(120), "the exec waited {waited:?} to be reported");
}

/// A policy file in `dir` that turns off the agent's own notebook discovery (TLJH, Docker,
/// local-process servers), so it sees only the cgroups a test gives it, not the notebooks
/// other tests run meanwhile.
fn only_watched_cgroups(dir: &TempDir) -> String {
    let config = dir.0.join("policy.yaml");
    std::fs::write(&config, "discovery:\n  tljh: false\n  docker: false\n  local_process: false\n").unwrap();
    config.to_string_lossy().into_owned()
}

/// The agent's voluntary context switches so far, all threads.
fn wakeups(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// A steady stream (three spawners, an exec every millisecond or so: each 2 ms drain finds a
/// few records, never a crowd) is drained in ever larger batches. Backing off only while each
/// drain found a crowd of 8 left such a stream drained every 2 ms, two thread wake-ups each
/// time: 120 µs of agent CPU per exec at 300 execs/s, where a storm costs 3.
#[test]
fn a_steady_stream_is_drained_in_batches_not_every_poll_interval() {
    privileged!();
    let cg = TestCgroup::new("steady").unwrap();
    let dir = TempDir::new("steady").unwrap();
    let config = only_watched_cgroups(&dir);
    let guard = start_events_guard(&["--config", &config], &cg);
    const SPAWNERS: usize = 3;
    const EACH: usize = 150;
    let before = wakeups(guard.id());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..SPAWNERS {
            s.spawn(|| {
                for _ in 0..EACH {
                    let p =
                        spawn_in(&cg, Exec::Path(Path::new("/bin/true")), &[OsStr::new("true"), OsStr::new("steady")])
                            .unwrap();
                    wait_ok(p).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
    });
    let took = t.elapsed();
    let woke = wakeups(guard.id()) - before;
    std::thread::sleep(Duration::from_millis(300));
    let records = stop_events_guard(guard);
    let got = records.iter().filter(|r| r["type"] == "exec" && r["argv"][1] == "steady").count();
    assert_eq!(got, SPAWNERS * EACH, "every exec of the stream is reported");
    // Draining every 2 ms: two wake-ups each time, about one a millisecond (the old reader
    // woke 86-167 times here in 0.56-0.6 s; this one 25-27, a few of them the agent's own
    // timers: scans, loss checks).
    let every_poll = took.as_millis() as u64;
    assert!(woke < every_poll / 10, "{woke} wake-ups in {took:?} (every poll: about {every_poll})");
}

/// While the agent drains on its timer, the kernel wakes it only once a quarter of a small ring
/// waits; it must drain then. A 200 ms poll lets the timer back off far past the time this
/// paced stream (about 50 execs/s, some 200 bytes each: the smallest ring in half a second)
/// takes to fill the ring.
#[test]
fn a_small_ring_is_drained_when_the_kernel_says_it_is_filling_not_only_on_the_timer() {
    privileged!();
    let cg = TestCgroup::new("small-ring").unwrap();
    let guard = start_events_guard(&["--ring-bytes", "4096", "--poll-ms", "200"], &cg);

    const EXECS: usize = 80;
    for _ in 0..EXECS {
        let t =
            spawn_in(&cg, Exec::Path(Path::new("/bin/true")), &[OsStr::new("true"), OsStr::new("small-ring")]).unwrap();
        wait_ok(t).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let records = stop_events_guard(guard);
    let got = records.iter().filter(|r| r["type"] == "exec" && r["argv"][1] == "small-ring").count();
    let lost: Vec<_> = records.iter().filter(|r| r["type"] == "lost").collect();
    assert_eq!((got, lost.len()), (EXECS, 0), "losses: {lost:?}");
}

/// `--events` adds exec lines to stdout and keeps the alerts there; `--format text` makes
/// both short lines for people (here into a pipe: no colour), an argv's control characters
/// escaped.
#[test]
fn events_add_exec_lines_next_to_the_alerts_in_text_for_people() {
    privileged!();
    use guard_tests::unit::{unit_policy, Unit};
    let dir = TempDir::new("text-format").unwrap();
    let config = dir.0.join("policy.yaml");
    std::fs::write(&config, unit_policy(None)).unwrap();
    let user = Unit::new_user();
    let rel = format!("/system.slice/jupyter-{user}.service");
    let mut guard = Command::new(guard_bin())
        .args(["run", "--no-pin", "--events", "--format", "text", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guard");
    let log = wait_running(&mut guard);
    std::thread::spawn(move || for _ in log {});
    let stdout = guard.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // A notebook's Python running a shell, with an escape sequence in its command.
    let code = "import os, time; os.system('echo \\x1b[2J >/dev/null'); time.sleep(30)";
    let unit = Unit::start_env(
        Path::new(&rel),
        (guard_tests::unit::NB_UID, guard_tests::unit::NB_GID),
        &user,
        &["/usr/bin/python3", "-c", code],
        None,
        &[],
    )
    .unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !lines.iter().any(|l: &String| l.contains("notebook.non_python_exec")) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    drop(unit);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(guard.wait().unwrap().success());
    let text = lines.join("\n");
    let alert = lines
        .iter()
        .find(|l| l.contains("notebook.non_python_exec"))
        .unwrap_or_else(|| panic!("no alert line:\n{text}"));
    assert!(alert.contains(&user) && alert.contains("sh -c echo \\x1b[2J") && alert.contains("← python3"), "{alert}");
    assert!(
        lines.iter().any(|l| l.contains("exec") && l.contains("pid=") && l.contains("/usr/bin/python3 -c")),
        "{text}"
    );
    assert!(lines.iter().all(|l| !l.starts_with('{') && !l.contains('\u{1b}')), "no JSON, no raw escapes:\n{text}");
}
