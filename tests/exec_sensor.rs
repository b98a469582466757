//! The process sensor against the real kernel: exact exec events for processes started in a
//! cgroup made by the test.

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use guard::sensors::decode::{Event, FileId};
use guard_abi::{EventKind, ARGS_LEN};
use guard_tests::*;
use nix::unistd::Pid;

const WAIT: Duration = Duration::from_secs(5);

fn id_of(p: &Path) -> FileId {
    FileId::of(&fs::metadata(p).unwrap())
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// Runs one exec in a fresh cgroup and returns its single exec event.
fn exec_one(name: &str, exec: Exec<'_>, argv: &[&OsStr]) -> (guard::sensors::decode::Exec, Pid, TestCgroup) {
    let cg = TestCgroup::new(name).unwrap();
    let mut h = SensorHarness::start(1 << 20, &[&cg]).unwrap();
    let pid = spawn_in(&cg, exec, argv).unwrap();
    wait_ok(pid).unwrap();
    let events = h.collect_until(WAIT, |evs| !execs_of(evs, pid).is_empty());
    let execs = execs_of(&events, pid);
    assert_eq!(execs.len(), 1, "exactly one exec event for {pid}: {events:#?}");
    assert_eq!(h.malformed, 0);
    (execs[0].clone(), pid, cg)
}

#[test]
fn exec_event_has_path_argv_parent_cgroup_and_identity() {
    privileged!();
    let argv = ["true", "alpha", "", "beta gamma"];
    let argv_os: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
    let (e, pid, cg) = exec_one("exec-basic", Exec::Path(Path::new("/bin/true")), &argv_os);
    assert_eq!(e.meta.tgid, pid.as_raw() as u32);
    assert_eq!(e.meta.pid, pid.as_raw() as u32);
    assert_eq!(e.ppid, std::process::id());
    assert_eq!(e.meta.cgroup_id, cg.id);
    assert_eq!(e.filename, PathBuf::from("/bin/true"));
    assert_eq!(e.argv.to_vec(), os(&argv));
    assert_eq!(e.argc, 4);
    assert!(!e.argv_truncated && !e.argv_unreadable && !e.filename_truncated);
    assert_eq!(e.interp, None);
    assert_eq!(e.exe, id_of(Path::new("/bin/true")));
    assert_eq!(e.comm, "true");
    assert_eq!((e.uid, e.gid), (0, 0));
    assert!(e.exe_nlink >= 1);
}

#[test]
fn renamed_copy_is_identified_by_its_own_inode_not_its_name() {
    privileged!();
    let dir = TempDir::new("copy").unwrap();
    let copy = dir.0.join("python3");
    fs::copy("/bin/true", &copy).unwrap();
    let (e, _, _) = exec_one("exec-copy", Exec::Path(&copy), &[OsStr::new("python3")]);
    assert_eq!(e.filename, copy);
    assert_eq!(e.comm, "python3");
    assert_eq!(e.exe, id_of(&copy));
    assert_ne!(e.exe, id_of(Path::new("/bin/true")));
    assert_eq!(e.exe_name, OsString::from("python3"));

    // A symlink under an innocent name loads the very same file as its target.
    let link = dir.0.join("jupyter");
    std::os::unix::fs::symlink("/bin/true", &link).unwrap();
    let (e, _, _) = exec_one("exec-link", Exec::Path(&link), &[OsStr::new("jupyter")]);
    assert_eq!(e.filename, link);
    assert_eq!(e.exe, id_of(Path::new("/bin/true")));
}

#[test]
fn shebang_script_reports_script_interpreter_and_loaded_binary() {
    privileged!();
    let dir = TempDir::new("script").unwrap();
    let script = dir.0.join("hello.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let (e, _, _) = exec_one("exec-script", Exec::Path(&script), &[OsStr::new("hello.sh"), OsStr::new("arg1")]);
    assert_eq!(e.filename, script);
    assert_eq!(e.interp, Some(PathBuf::from("/bin/sh")));
    // The loaded binary is the interpreter (through its symlinks), not the script.
    assert_eq!(e.exe, id_of(Path::new("/bin/sh")));
    // The kernel rewrites argv: interpreter, script path, then the original arguments.
    assert_eq!(e.argv.to_vec(), vec![OsString::from("/bin/sh"), script.clone().into_os_string(), "arg1".into()]);
}

#[test]
fn execveat_of_memfd_is_reported_as_fileless() {
    privileged!();
    let fd = nix::sys::memfd::memfd_create(c"guard-test", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let mut f = fs::File::from(fd);
    f.write_all(&fs::read("/bin/true").unwrap()).unwrap();
    let mem_id = FileId::of(&f.metadata().unwrap());
    use std::os::fd::AsRawFd;
    let raw = f.as_raw_fd();
    let (e, _, _) = exec_one("exec-memfd", Exec::Fd(raw), &[OsStr::new("sshd")]);
    assert_eq!(e.filename, PathBuf::from(format!("/dev/fd/{raw}")));
    assert_eq!(e.exe, mem_id);
    assert_eq!(e.exe_nlink, 0, "a memfd has no links");
    assert!(e.exe_name.to_string_lossy().starts_with("memfd:guard-test"), "{:?}", e.exe_name);
    assert_eq!(e.argv.to_vec(), os(&["sshd"]));
}

#[test]
fn argv_longer_than_the_bound_is_flagged_truncated() {
    privileged!();
    let long = "x".repeat(ARGS_LEN + 100);
    let argv = [OsStr::new("true"), OsStr::new("first"), OsStr::new(&long), OsStr::new("last")];
    let (e, _, _) = exec_one("exec-long", Exec::Path(Path::new("/bin/true")), &argv);
    assert!(e.argv_truncated);
    assert_eq!(e.argc, 4, "argc is the true count");
    assert_eq!(e.argv[..2], os(&["true", "first"])[..]);
    let kept: usize = e.argv.iter().map(|a| a.len() + 1).sum::<usize>() - 1;
    assert_eq!(kept, ARGS_LEN, "exactly ARGS_LEN bytes are kept");
    assert!(e.argv[2].len() < long.len());

    // Exactly at the bound is not truncated.
    let fit = "y".repeat(ARGS_LEN - "true".len() - 2);
    let argv = [OsStr::new("true"), OsStr::new(&fit)];
    let (e, _, _) = exec_one("exec-fit", Exec::Path(Path::new("/bin/true")), &argv);
    assert!(!e.argv_truncated);
    assert_eq!(e.argv[1].len(), fit.len());
}

/// Forks+execs `/bin/true` `per_thread` times from each of two threads.
fn burst(cg: &TestCgroup, per_thread: usize) -> usize {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        let pid = spawn_in(cg, Exec::Path(Path::new("/bin/true")), &[OsStr::new("true")]).unwrap();
                        wait_ok(pid).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    2 * per_thread
}

fn exec_count(events: &[Event], cg: &TestCgroup) -> u64 {
    events.iter().filter(|e| matches!(e, Event::Exec(x) if x.meta.cgroup_id == cg.id)).count() as u64
}

#[test]
fn burst_received_plus_lost_equals_performed() {
    privileged!();
    // A ring big enough, drained concurrently: every exec accounted for.
    let cg = TestCgroup::new("burst").unwrap();
    let mut h = SensorHarness::start(8 << 20, &[&cg]).unwrap();
    let performed = std::thread::scope(|s| {
        let w = s.spawn(|| burst(&cg, 1000));
        let mut got = 0;
        while !w.is_finished() {
            got += exec_count(&h.drain(), &cg);
            std::thread::sleep(Duration::from_millis(2));
        }
        (w.join().unwrap(), got)
    });
    let (performed, mut received) = performed;
    received += exec_count(&h.drain(), &cg);
    let lost = h.sensor.kernel_losses().unwrap().get(EventKind::Exec);
    eprintln!("big ring: performed {performed}, received {received}, lost {lost}");
    assert_eq!(received + lost, performed as u64);

    // A ring too small for the burst and not drained while it runs: losses happen and are
    // counted exactly.
    let cg = TestCgroup::new("burst-small").unwrap();
    let mut h = SensorHarness::start(16 << 10, &[&cg]).unwrap();
    let performed = burst(&cg, 200);
    let received = exec_count(&h.drain(), &cg);
    let lost = h.sensor.kernel_losses().unwrap().get(EventKind::Exec);
    eprintln!("small ring: performed {performed}, received {received}, lost {lost}");
    assert!(lost > 0, "a 16 KiB ring cannot hold {performed} exec records");
    assert_eq!(received + lost, performed as u64);
    assert_eq!(h.malformed, 0);
}

#[test]
fn fork_and_exit_events_carry_lineage() {
    privileged!();
    let cg = TestCgroup::new("lineage").unwrap();
    let mut h = SensorHarness::start(1 << 20, &[&cg]).unwrap();
    let pid = spawn_in(
        &cg,
        Exec::Path(Path::new("/bin/sh")),
        &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new("/bin/true x; exit 3")],
    )
    .unwrap();
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 3));
    let me = pid.as_raw() as u32;
    let events = h.collect_until(WAIT, |evs| evs.iter().any(|e| matches!(e, Event::Exit(x) if x.meta.tgid == me)));
    let fork = events.iter().find_map(|e| match e {
        Event::Fork(f) if f.meta.tgid == me => Some(f.child_tgid),
        _ => None,
    });
    let child = fork.expect("the shell forked a child for /bin/true");
    let child_exec = events.iter().find_map(|e| match e {
        Event::Exec(x) if x.meta.tgid == child => Some(x),
        _ => None,
    });
    let child_exec = child_exec.expect("the child's exec");
    assert_eq!(child_exec.ppid, me);
    assert_eq!(child_exec.argv.to_vec(), os(&["/bin/true", "x"]));
    let exit = events.iter().find_map(|e| match e {
        Event::Exit(x) if x.meta.tgid == me => Some(x.exit_code),
        _ => None,
    });
    assert_eq!(exit, Some(3 << 8), "exit code as wait(2) encodes it");
}

#[test]
fn unwatched_cgroups_and_descendants() {
    privileged!();
    // Watching a parent covers a child cgroup created after the watch began (a pod's
    // container created after its pod cgroup).
    let parent = TestCgroup::new("pod").unwrap();
    let other = TestCgroup::new("other").unwrap();
    let mut h = SensorHarness::start(1 << 20, &[&parent]).unwrap();
    let child = TestCgroup::new_under(parent.rel.strip_prefix("/").unwrap(), "ctr").unwrap();
    let a = spawn_in(&child, Exec::Path(Path::new("/bin/true")), &[OsStr::new("true")]).unwrap();
    let b = spawn_in(&other, Exec::Path(Path::new("/bin/true")), &[OsStr::new("true")]).unwrap();
    wait_ok(a).unwrap();
    wait_ok(b).unwrap();
    let events = h.collect_until(WAIT, |evs| !execs_of(evs, a).is_empty());
    assert_eq!(execs_of(&events, a).len(), 1);
    assert_eq!(execs_of(&events, a)[0].meta.cgroup_id, child.id);
    std::thread::sleep(Duration::from_millis(50));
    let late = h.drain();
    assert!(execs_of(&events, b).is_empty() && execs_of(&late, b).is_empty(), "unwatched cgroup reported");
    drop(child);
}

/// Drift's kernel hook: an executable made by a process in a watched cgroup is reported once,
/// naming that process, however many pages it wrote; running it (an atime update) and an
/// executable made outside the cgroup are not reported.
#[test]
fn an_executable_made_in_a_watched_cgroup_is_reported_once_by_its_maker() {
    privileged!();
    let cg = TestCgroup::new("written").unwrap();
    let dir = TempDir::new("written").unwrap();
    let mut h = SensorHarness::start(1 << 20, &[&cg]).unwrap();
    assert!(h.sensor.drift_hook(), "the kernel took drift's hook");
    let (made, outside) = (dir.0.join("made"), dir.0.join("outside"));
    // This test process is in no watched cgroup.
    fs::copy("/bin/sh", &outside).unwrap();
    // cp keeps /bin/sh's mode: the copy is executable from its first page on.
    let cp =
        spawn_in(&cg, Exec::Path(Path::new("/bin/cp")), &[OsStr::new("cp"), OsStr::new("/bin/sh"), made.as_os_str()])
            .unwrap();
    wait_ok(cp).unwrap();
    let run = spawn_in(&cg, Exec::Path(&made), &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(":")]).unwrap();
    wait_ok(run).unwrap();
    let mut events = h.collect_until(WAIT, |evs| !execs_of(evs, run).is_empty());
    std::thread::sleep(Duration::from_millis(100));
    events.extend(h.drain());
    let written: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Written(w) => Some(w),
            _ => None,
        })
        .collect();
    let of = |p: &Path| written.iter().filter(|w| w.file.file() == id_of(p).file()).collect::<Vec<_>>();
    let reports = of(&made);
    assert_eq!(reports.len(), 1, "one report of the copy: {written:#?}");
    assert_eq!(reports[0].meta.tgid, cp.as_raw() as u32, "cp made it");
    assert_eq!(reports[0].meta.cgroup_id, cg.id);
    assert_eq!(
        reports[0].mode,
        0o100000 | fs::metadata(&made).unwrap().permissions().mode() & 0o7777,
        "a regular file"
    );
    assert!(of(&outside).is_empty(), "made outside the watched cgroup: {written:#?}");
}
