//! Seccomp profiles from observed behaviour, end to end: record a real IPython kernel session
//! with `guard seccomp record`, generate a profile, run the same session again under it in a
//! real OCI runtime (runc), and check that what the session never did is refused.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use guard::seccomp::arch::Arch;
use guard_tests::{
    guard_bin, output_within, privileged,
    seccomp::{guard, ok, Recording},
    spawn_in, test_python, wait_ok, wait_within, Exec, TempDir, TestCgroup, DRIVER_LIMIT,
};
use serde_json::{json, Value};

/// Typical notebook cells: arithmetic, files, threads, a listening socket, a subprocess.
const CELLS: &[&str] = &[
    "x = sum(i * i for i in range(100000))\nprint(x)",
    "import json, os, tempfile\nfd, p = tempfile.mkstemp()\nos.write(fd, json.dumps({'a': 1}).encode())\nos.close(fd)\nprint(open(p).read())\nos.remove(p)",
    "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start(); t.join()\nprint(out)",
    "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint(s.getsockname()[0])\ns.close()",
    "import subprocess\nprint(subprocess.run(['ls', '/usr'], capture_output=True).returncode)",
    "import time, math\ntime.sleep(0.05)\nprint(math.sqrt(2) > 1)",
];

/// Directories the test Python needs (its venv and the interpreter it links to).
fn python_dirs() -> Vec<PathBuf> {
    let out = Command::new(test_python())
        .args(["-c", "import sys; print(sys.prefix); print(sys.base_prefix)"])
        .output()
        .unwrap();
    let mut dirs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect();
    // The venv may be reached through a symlink: bind its real location too.
    dirs.extend(dirs.clone().iter().filter_map(|d| std::fs::canonicalize(d).ok()));
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dirs.sort();
    dirs.dedup();
    dirs
}

/// An OCI bundle that runs `args` with the host's /usr and /etc read-only, the test Python
/// bound in, `work` writable, Docker's default capabilities plus CAP_SYS_ADMIN (so that what
/// fails, fails because of the profile), and `seccomp` when given.
fn bundle(dir: &Path, work: &Path, args: &[String], seccomp: Option<&Value>) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let b = dir.join(format!("bundle-{}-{n}", std::process::id()));
    let rootfs = b.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    // Debian's merged /usr.
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l)).unwrap();
    }
    let ro = |p: &Path| json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro"]});
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
        ro(Path::new("/usr")),
        ro(Path::new("/etc")),
    ];
    mounts.extend(python_dirs().iter().map(|d| ro(d)));
    mounts.push(json!({"destination": work, "type": "bind", "source": work, "options": ["rbind", "rw"]}));
    let mut caps = guard_tests::pod::RUNTIME_DEFAULT_CAPS.to_vec();
    caps.extend(["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
    let mut linux = json!({
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        "rootfsPropagation": "rprivate",
    });
    if let Some(s) = seccomp {
        linux["seccomp"] = s.clone();
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": session_env(work).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": work,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "notebook",
        "mounts": mounts,
        "linux": linux,
    });
    std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    b
}

/// Runs the bundle with runc; returns (exit status, stdout, stderr). A container still
/// running after `DRIVER_LIMIT` is killed and removed, and the test fails with its output.
fn runc(bundle: &Path, state: &Path) -> (i32, String, String) {
    let id = bundle.file_name().unwrap().to_string_lossy().into_owned();
    let mut cmd = Command::new("runc");
    cmd.arg("--root").arg(state).args(["run", "--bundle"]).arg(bundle).arg(&id);
    let out = match output_within(&mut cmd, DRIVER_LIMIT) {
        Ok(out) => out,
        Err(e) => {
            let _ = Command::new("runc").arg("--root").arg(state).args(["delete", "--force", &id]).status();
            panic!("runc (cargo xtask test installs it): {e:#}");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Python that tries what a notebook never needs and prints each call's errno (0: it worked).
/// The ptrace-class call reads the process's own memory with process_vm_readv, which changes
/// nothing. PTRACE_TRACEME would make the container's parent, runc, its tracer without runc
/// knowing: runc then hung after the container exited in about 1 run in 75 here.
const FORBIDDEN: &str = "import ctypes, os\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
def errno(r):\n    return 0 if r >= 0 else ctypes.get_errno()\n\
print('unshare', errno(libc.unshare(0x00020000)))\n\
class Iov(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n\
src, dst = ctypes.create_string_buffer(b'secret', 8), ctypes.create_string_buffer(8)\n\
local, remote = Iov(ctypes.addressof(dst), 8), Iov(ctypes.addressof(src), 8)\n\
print('process_vm_readv', errno(libc.process_vm_readv(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)))\n\
d = os.path.join(os.environ['TMPDIR'], 'm'); os.makedirs(d, exist_ok=True)\n\
print('mount', errno(libc.mount(b'none', d.encode(), b'tmpfs', 0, None)))\n";

fn errnos(stdout: &str) -> std::collections::BTreeMap<String, i32> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// The kernel driver's command line, with its cells and results in `work`.
fn session_args(work: &Path) -> Vec<String> {
    std::fs::create_dir_all(work).unwrap();
    let spec = work.join("cells.json");
    std::fs::write(&spec, serde_json::to_vec(&json!({"notebook": "analysis.ipynb", "cells": CELLS})).unwrap()).unwrap();
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/run_cells.py");
    [test_python(), driver, spec, work.join("results.json")].iter().map(|p| p.display().to_string()).collect()
}

/// The environment of a fresh notebook home in `work` (the same inside and outside runc).
fn session_env(work: &Path) -> Vec<(String, String)> {
    let w = work.display();
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), format!("{w}")),
        ("TMPDIR".into(), format!("{w}")),
        ("JUPYTER_RUNTIME_DIR".into(), format!("{w}/runtime")),
        ("IPYTHONDIR".into(), format!("{w}/ipython")),
    ]
}

/// Runs the session on the host inside `cg` (the driver joins it before starting the kernel).
fn run_session_on_host(cg: &TestCgroup, work: &Path) -> Vec<Value> {
    let args = session_args(work);
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]).env_clear().envs(session_env(work)).env("GUARD_CGROUP", &cg.path).current_dir(work);
    let out = output_within(&mut cmd, DRIVER_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&std::fs::read(work.join("results.json")).unwrap()).unwrap()
}

#[test]
fn a_recorded_notebook_session_runs_under_its_profile_in_runc_and_nothing_else_does() {
    privileged!();
    let dir = TempDir::new("seccomp").unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();

    // 1. Record a real kernel session on the host, in a fresh home as a new container has.
    let rec_path = dir.0.join("recording.json");
    let rec = Recording::start(&["--cgroup", &cg.rel.display().to_string()], &rec_path);
    let host_work = dir.0.join("host");
    let results = run_session_on_host(&cg, &host_work);
    assert!(results.iter().all(|r| r["status"] == "ok"), "{results:?}");
    let file = rec.stop();
    assert_eq!(file.recordings.len(), 1);
    let r = &file.recordings[0];
    assert_eq!(r.target.user.as_deref(), Some(user.as_str()), "a TLJH unit names its user");
    let native = &r.syscalls[&Arch::X86_64];
    for n in ["execve", "bind", "listen", "openat", "futex", "mkdir"] {
        assert!(native.contains(n), "{n} missing from {native:?}");
    }
    assert!(native.len() >= 40 && native.len() <= 200, "{} syscalls: {native:?}", native.len());
    assert_eq!(r.counts[&Arch::X86_64], native.len());
    assert_eq!(r.out_of_range, 0);

    // 2. Generate the three formats.
    let profile = dir.0.join("notebook.json");
    let out = ok(&guard(&[
        "seccomp",
        "generate",
        rec_path.to_str().unwrap(),
        "--format",
        "oci",
        "-o",
        profile.to_str().unwrap(),
    ]));
    assert!(out.contains("syscalls allowed"), "{out}");
    let oci: Value = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    assert_eq!(oci["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(oci["defaultErrnoRet"], 1);
    let allowed: BTreeSet<String> = oci["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
        .collect();
    for n in ["unshare", "mount", "ptrace", "process_vm_readv", "setns", "bpf"] {
        assert!(!allowed.contains(n), "{n} must not be allowed");
    }

    // 3. The same session, under the profile, in runc: every cell runs as before. The
    //    recording never saw runc's own calls after it loads the filter: the profile's
    //    runtime needs must cover them.
    let work = dir.0.join("work");
    let state = dir.0.join("runc-state");
    let args = session_args(&work);
    let (code, stdout, stderr) = runc(&bundle(&dir.0, &work, &args, Some(&oci)), &state);
    assert_eq!(code, 0, "the session under its profile:\n{stdout}\n{stderr}");
    let confined: Vec<Value> = serde_json::from_slice(&std::fs::read(work.join("results.json")).unwrap()).unwrap();
    assert_eq!(confined.len(), CELLS.len());
    for (i, (c, plain)) in confined.iter().zip(&results).enumerate() {
        assert_eq!(c["status"], "ok", "cell {i} under the profile: {c}");
        assert_eq!(c["stdout"], plain["stdout"], "cell {i} prints the same");
    }

    // 4. What the session never did fails with EPERM under the profile, and works without it
    //    (the container has CAP_SYS_ADMIN and CAP_SYS_PTRACE: the profile is what refuses).
    std::fs::create_dir_all(&work).unwrap();
    let py = vec![test_python().display().to_string(), "-c".into(), FORBIDDEN.into()];
    let (code, stdout, stderr) = runc(&bundle(&dir.0, &work, &py, None), &state);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let free = errnos(&stdout);
    assert_eq!((free["unshare"], free["process_vm_readv"], free["mount"]), (0, 0, 0), "without a profile: {stdout}");
    let (code, stdout, stderr) = runc(&bundle(&dir.0, &work, &py, Some(&oci)), &state);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let confined = errnos(&stdout);
    let eperm = libc::EPERM;
    assert_eq!(
        (confined["unshare"], confined["process_vm_readv"], confined["mount"]),
        (eperm, eperm, eperm),
        "{stdout}"
    );

    // 5. The same verdicts through `guard seccomp check` (libseccomp in-process).
    let mut check = Command::new(guard_bin());
    check.args(["seccomp", "check", profile.to_str().unwrap(), "--"]).arg(test_python()).args(["-c", FORBIDDEN]);
    let out = output_within(check.env("TMPDIR", &work), DRIVER_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    let checked = errnos(&ok(&out));
    assert_eq!((checked["unshare"], checked["process_vm_readv"]), (eperm, eperm), "{checked:?}");
    let mut check = Command::new(guard_bin());
    check.args(["seccomp", "check", profile.to_str().unwrap(), "--", "/bin/sh", "-c", "exit 7"]);
    let out = output_within(&mut check, DRIVER_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.status.code(), Some(7), "check exits with the command's status");

    // 6. A notebook stopped and continued mid-sleep (a debugger, a freezer, SIGSTOP/SIGCONT)
    //    carries on under its profile: the kernel resumes the sleep through restart_syscall,
    //    which the recorded session had no reason to make.
    for sleep in [SLEEP_IN_POLL, SLEEP_ON_A_LOCK] {
        let (code, stdout, stderr) = stopped_and_continued(&profile, sleep);
        assert_eq!((code, stdout.as_str()), (Some(0), "sleeping\nresumed\n"), "{sleep}\n{stderr}");
    }
}

/// Sleeps in poll(2) with a timeout, and in a futex wait with one: both resumed by
/// restart_syscall after a stop.
const SLEEP_IN_POLL: &str = "import select\nprint('sleeping', flush=True)\nselect.poll().poll(1500)\nprint('resumed')";
const SLEEP_ON_A_LOCK: &str =
    "import threading\nl = threading.Lock()\nl.acquire()\nprint('sleeping', flush=True)\nl.acquire(timeout=1.5)\nprint('resumed')";

/// Runs `code` under `profile` with `guard seccomp check` (which execs it: the child is the
/// Python process), stops it 300 ms into its sleep and continues it 200 ms later.
fn stopped_and_continued(profile: &Path, code: &str) -> (Option<i32>, String, String) {
    use nix::sys::signal::{kill, Signal};
    use std::io::Read;
    let mut child = Command::new(guard_bin())
        .args(["seccomp", "check", profile.to_str().unwrap(), "--"])
        .arg(test_python())
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    if first == "sleeping\n" {
        std::thread::sleep(Duration::from_millis(300));
        kill(pid, Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        kill(pid, Signal::SIGCONT).unwrap();
    }
    let Some(status) = wait_within(&mut child, Duration::from_secs(30)).unwrap() else {
        let _ = child.kill();
        panic!("{code}: still running 30 s after it was continued");
    };
    let (mut rest, mut stderr) = (String::new(), String::new());
    stdout.read_to_string(&mut rest).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), first + &rest, stderr)
}

#[test]
fn int_0x80_calls_are_recorded_under_the_i386_table() {
    privileged!();
    let dir = TempDir::new("int80").unwrap();
    let cg = TestCgroup::new("int80").unwrap();
    let out = dir.0.join("r.json");
    let rec = Recording::start(&["--cgroup", &cg.rel.display().to_string()], &out);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_int80"));
    let pid = spawn_in(&cg, Exec::Path(&bin), &[std::ffi::OsStr::new("int80")]).unwrap();
    wait_ok(pid).unwrap();
    let file = rec.stop();
    let r = &file.recordings[0];
    let x86 = r.syscalls.get(&Arch::X86).unwrap_or_else(|| panic!("no i386 calls recorded: {r:?}"));
    assert!(x86.contains("getpid") && x86.contains("getuid32"), "{x86:?}");
    // Their numbers in the x86_64 table: a recorder that ignores the ABI reports these.
    let native = &r.syscalls[&Arch::X86_64];
    assert!(!native.contains("fremovexattr"), "i386 getuid32 misnamed as x86_64 fremovexattr");
    assert!(native.contains("execve"), "{native:?}");
}

/// The recorder caches, per CPU, the last task it saw and whether it is recorded. A task that
/// another process moves into the recorded cgroup while it keeps making calls must be
/// recorded from the move on: the move retires the entry the task had.
#[test]
fn a_task_moved_into_the_recorded_cgroup_while_running_is_recorded_from_then_on() {
    privileged!();
    let dir = TempDir::new("moved").unwrap();
    let recorded = TestCgroup::new("moved-into").unwrap();
    let outside = TestCgroup::new("moved-from").unwrap();
    let out = dir.0.join("r.json");
    let rec = Recording::start(&["--cgroup", &recorded.rel.display().to_string()], &out);
    // On one CPU, a getppid loop (its cache entry stays hot there) until it sees itself in the
    // recorded cgroup, then one call nothing else here makes. In between it spins 50 ms
    // without a syscall: the mover's tracepoint comes a moment after the move itself (the
    // window the recorder documents), and a mover preempted in between would otherwise fail
    // the test. Spinning, not sleeping, keeps the CPU's cache entry for this task as it was,
    // so without the move hook the call is still missed.
    let script = format!(
        "import os, time\nos.sched_setaffinity(0, {{0}})\nwant = '0::{}'\nwhile want not in open('/proc/self/cgroup').read().splitlines():\n    os.getppid()\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.05:\n    pass\nos.getsid(0)\n",
        recorded.rel.display()
    );
    let py = test_python();
    let argv = [std::ffi::OsStr::new("python3"), "-c".as_ref(), script.as_ref()];
    let pid = spawn_in(&outside, Exec::Path(&py), &argv).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(recorded.path.join("cgroup.procs"), pid.to_string()).unwrap();
    wait_ok(pid).unwrap();
    let file = rec.stop();
    let r = &file.recordings[0];
    let native = r.syscalls.get(&Arch::X86_64).unwrap_or_else(|| panic!("nothing recorded after the move: {r:?}"));
    assert!(native.contains("getsid"), "the moved task's calls after the move were not recorded: {native:?}");
    assert!(!native.contains("execve"), "the task's start, outside the recorded cgroup, was recorded: {native:?}");
}
