//! `guard run --events` end to end: the real binary, a real cgroup, a real shell.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::*;

#[test]
fn guard_run_events_prints_exec_with_lineage_and_stops_cleanly() {
    if !require_root("guard_run_events_prints_exec_with_lineage_and_stops_cleanly") {
        return;
    }
    let cg = TestCgroup::new("agent").unwrap();
    let mut guard = Command::new(guard_bin())
        .args(["run", "--no-pin", "--events", "--watch-cgroup"])
        .arg(&cg.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guard (built by cargo xtask test)");

    // Wait until it is attached.
    let stderr = guard.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = lines.next().expect("guard exited before it was running").unwrap();
        if line.contains("guard running") {
            break;
        }
        assert!(Instant::now() < deadline, "guard did not start");
    }
    std::thread::spawn(move || for _ in lines {});

    let sh = spawn_in(
        &cg,
        Exec::Path(Path::new("/bin/sh")),
        &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new("/bin/true lineage-marker; true")],
    )
    .unwrap();
    wait_ok(sh).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = guard.wait_with_output().unwrap();
    assert!(out.status.success(), "guard exits 0 on SIGTERM: {:?}", out.status);

    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect();
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
