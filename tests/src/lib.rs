//! Test harness for privileged integration tests: real cgroups, real processes, real kernel.
//!
//! Tests that need root call [`require_root`]. Outside CI a non-root run skips them with a
//! message; in CI (`CI` or `GUARD_REQUIRE_PRIVILEGED` set) a skip is a failure.

pub mod fake_kube;
pub mod pod;
pub mod unit;

use std::{
    ffi::{CString, OsStr},
    fs,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use guard::{
    discovery::cgroup::{cgroup_id, find_cgroup2_mount},
    sensors::{
        decode::{decode, Event},
        process::{ProcessSensor, SensorOptions},
    },
};
use nix::{
    sys::wait::{waitpid, WaitStatus},
    unistd::{fork, ForkResult, Pid},
};

/// True when privileged tests can run. Panics instead of skipping where skips are forbidden.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let strict = std::env::var_os("GUARD_REQUIRE_PRIVILEGED").is_some_and(|v| v != "0")
        || std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1");
    if strict {
        panic!("{test} needs root, and skipping privileged tests is not allowed here");
    }
    eprintln!("SKIP {test}: needs root");
    false
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The test process that made a leftover, from the names this harness gives: `<name>-<pid>-<n>`
/// (cgroups, pin directories) and `jupyter-nbtest<pid>x<n>.service` (TLJH-shaped cgroups).
fn creator_pid(name: &str) -> Option<i32> {
    if let Some(rest) = name.strip_prefix("jupyter-nbtest").and_then(|r| r.strip_suffix(".service")) {
        let (pid, n) = rest.split_once('x')?;
        n.parse::<u32>().ok()?;
        return pid.parse().ok();
    }
    let (head, n) = name.rsplit_once('-')?;
    n.parse::<u32>().ok()?;
    head.rsplit_once('-')?.1.parse().ok()
}

/// Removes what test runs that were killed (a CI timeout, ^C) left: their pinned programs, which
/// would otherwise go on running at every exec of the machine, and their empty cgroups, which
/// the agent would take for notebooks. Only leftovers whose creator is gone are touched.
fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str| {
            creator_pid(name)
                .is_some_and(|pid| pid != std::process::id() as i32 && !Path::new(&format!("/proc/{pid}")).exists())
        };
        for e in fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("nbg-test-") && dead(&name) {
                match guard::sensors::process::remove_pins(&e.path()) {
                    Ok(n) => eprintln!("removed {n} pins a killed test run left in {}", e.path().display()),
                    Err(err) => eprintln!("could not remove the leftover pins in {}: {err:#}", e.path().display()),
                }
            }
        }
        let Ok(mount) = find_cgroup2_mount() else { return };
        for parent in [mount.clone(), mount.join("system.slice")] {
            for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // A cgroup still holding processes is left alone: nothing is killed here.
                if e.path().is_dir() && dead(&name) && remove_tree(&e.path()).is_ok() {
                    eprintln!("removed the cgroup a killed test run left at {}", e.path().display());
                }
            }
        }
    });
}

/// A cgroup v2 directory made for one test, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup2 root, as the agent reports it.
    pub rel: PathBuf,
    pub id: u64,
    procs: OwnedFd,
}

impl TestCgroup {
    pub fn new(name: &str) -> Result<Self> {
        Self::new_under(Path::new(""), name)
    }

    /// A cgroup at `parent/name` below the cgroup2 root (`parent` is created too).
    pub fn new_under(parent: &Path, name: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::exact(parent, &format!("{name}-{}-{n}", std::process::id()))
    }

    /// A TLJH-shaped unit cgroup, `system.slice/jupyter-<user>.service`, for a fresh user name.
    pub fn tljh() -> Result<(Self, String)> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let user = format!("nbtest{}x{n}", std::process::id());
        Ok((Self::exact(Path::new("system.slice"), &format!("jupyter-{user}.service"))?, user))
    }

    pub fn exact(parent: &Path, name: &str) -> Result<Self> {
        sweep_leftovers();
        let mount = find_cgroup2_mount()?;
        let rel = Path::new("/").join(parent).join(name);
        let path = mount.join(rel.strip_prefix("/").unwrap());
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let id = cgroup_id(&path)?;
        let procs = fs::OpenOptions::new().write(true).open(path.join("cgroup.procs"))?.into();
        Ok(Self { path, rel, id, procs })
    }

    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes a failed test left behind would keep the cgroup busy.
        if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Children first (a test may nest cgroups), then this one.
        let _ = remove_tree(&self.path);
    }
}

fn remove_tree(p: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(p)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    fs::remove_dir(p)
}

/// How a child process starts its new image.
pub enum Exec<'a> {
    /// execve(path, argv)
    Path(&'a Path),
    /// execveat(fd, "", argv, envp, AT_EMPTY_PATH): fileless exec of an open file.
    Fd(RawFd),
}

fn cstrings<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(items: I) -> Result<Vec<CString>> {
    items.into_iter().map(|s| Ok(CString::new(s.as_ref().as_bytes())?)).collect()
}

/// Forks a child that moves itself into `cgroup` and then execs. Only async-signal-safe calls
/// happen between fork and exec: everything is prepared before the fork.
pub fn spawn_in(cgroup: &TestCgroup, exec: Exec<'_>, argv: &[&OsStr]) -> Result<Pid> {
    let argv_c = cstrings(argv.iter())?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let env_c = cstrings(["PATH=/usr/bin:/bin", "LANG=C"])?;
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let path_c = match exec {
        Exec::Path(p) => Some(CString::new(p.as_os_str().as_bytes())?),
        Exec::Fd(_) => None,
    };
    let empty = CString::new("")?;
    let procs = cgroup.procs_fd();
    // Silence the child: tests read events, not output.
    let devnull = fs::OpenOptions::new().write(true).open("/dev/null")?;
    let devnull_fd = devnull.as_raw_fd();

    // SAFETY: the child only calls async-signal-safe functions (write, dup2, execve, _exit).
    match unsafe { fork() }? {
        ForkResult::Child => unsafe {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(126);
            }
            libc::dup2(devnull_fd, 1);
            libc::dup2(devnull_fd, 2);
            match (&exec, &path_c) {
                (Exec::Path(_), Some(p)) => {
                    libc::execve(p.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
                }
                (Exec::Fd(fd), _) => {
                    libc::syscall(
                        libc::SYS_execveat,
                        *fd,
                        empty.as_ptr(),
                        argv_p.as_ptr(),
                        env_p.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    );
                }
                _ => {}
            }
            libc::_exit(127)
        },
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Waits for `pid` and fails unless it exited 0.
pub fn wait_ok(pid: Pid) -> Result<()> {
    match waitpid(pid, None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => bail!("child {pid} ended with {other:?}"),
    }
}

/// Waits for `child` to exit, at most `limit`: `None` if it is still running then.
pub fn wait_within(child: &mut std::process::Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to the end, as `Command::output`, but never waits past `limit`: a child that
/// hangs (a runtime stuck on its container, a kernel that stopped answering) is killed with
/// its whole process group, and the error carries what it printed. A hung test would
/// otherwise hold CI until its overall timeout and say nothing.
pub fn output_within(cmd: &mut std::process::Command, limit: Duration) -> Result<std::process::Output> {
    use std::{io::Read, os::unix::process::CommandExt, process::Stdio};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = wait_within(&mut child, limit)?;
    if status.is_none() {
        let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
        let _ = child.wait();
    }
    // Anything that left the group and still holds the pipes must not hang the reader either.
    let collect = |h: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(5);
        while !h.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() {
            h.join().unwrap_or_default()
        } else {
            b"(still held open by a process outside the group)".to_vec()
        }
    };
    let (stdout, stderr) = (collect(out), collect(err));
    match status {
        Some(status) => Ok(std::process::Output { status, stdout, stderr }),
        None => bail!(
            "{cmd:?} did not finish within {} s and was killed\nstdout:\n{}\nstderr:\n{}",
            limit.as_secs_f64(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// A process sensor watching only the given cgroups, read synchronously by the test.
pub struct SensorHarness {
    pub sensor: ProcessSensor,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    pub malformed: u64,
}

impl SensorHarness {
    pub fn start(ring_bytes: u32, cgroups: &[&TestCgroup]) -> Result<Self> {
        let opts = SensorOptions { ring_bytes, watch_all: false, ..SensorOptions::default() };
        let mut sensor = ProcessSensor::load(&opts)?;
        for cg in cgroups {
            sensor.watch_cgroup(cg.id)?;
        }
        let ring = sensor.take_ring().context("ring")?;
        Ok(Self { sensor, ring, malformed: 0 })
    }

    /// Everything currently in the ring.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Ok(ev) => out.push(ev),
                Err(_) => self.malformed += 1,
            }
        }
        out
    }

    /// Reads until `done` says the collected events are enough, or the timeout passes.
    pub fn collect_until(&mut self, timeout: Duration, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            all.extend(self.drain());
            if done(&all) || Instant::now() > deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The exec events of one process.
pub fn execs_of(events: &[Event], pid: Pid) -> Vec<&guard::sensors::decode::Exec> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Exec(x) if x.meta.tgid == pid.as_raw() as u32 => Some(&**x),
            _ => None,
        })
        .collect()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("guard-{name}-{}-{n}", std::process::id()));
        fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The `guard` binary built by `cargo xtask test` (or `GUARD_BIN`).
pub fn guard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GUARD_BIN") {
        return p.into();
    }
    // target/debug/deps/<test> → target/debug/guard
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).map(|d| d.join("guard")).expect("target dir")
}

/// A running `guard run` with a test policy, writing alerts to a file.
pub struct GuardProcess {
    child: std::process::Child,
    /// The policy file it runs with (rewrite it to test reloads).
    pub config: PathBuf,
    /// Its own bpffs pin directory (tests run side by side).
    pub pin_dir: PathBuf,
    /// Leave the pins when dropped (an agent "crashed" on purpose, to be adopted).
    keep_pins: bool,
    pub alerts_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Its standard output (the exec feed, when started with `--events`).
    pub stdout_path: PathBuf,
    _dir: TempDir,
}

impl GuardProcess {
    /// Starts guard with `policy` (YAML, over the embedded default) plus `args`, and waits
    /// until it reports that it is running.
    pub fn start(policy: &str, args: &[&str]) -> Result<Self> {
        Self::start_env(policy, args, &[])
    }

    /// As `start`, with extra environment for the agent only.
    pub fn start_env(policy: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/nbg-test-{}-{n}", std::process::id()));
        Self::start_pinned(policy, args, env, pin_dir)
    }

    /// As `start_env`, pinning in `pin_dir` (a second agent on the same directory adopts).
    pub fn start_pinned(
        policy: &str,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        pin_dir: PathBuf,
    ) -> Result<Self> {
        sweep_leftovers();
        let dir = TempDir::new("guard")?;
        let cfg = dir.0.join("policy.yaml");
        fs::write(&cfg, policy)?;
        let alerts_path = dir.0.join("alerts.json");
        let stderr_path = dir.0.join("guard.log");
        let stdout_path = dir.0.join("stdout.jsonl");
        let child = std::process::Command::new(guard_bin())
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--output")
            .arg(format!("file:{}", alerts_path.display()))
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(fs::File::create(&stdout_path)?)
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting guard (built by cargo xtask test)")?;
        let g =
            Self { child, config: cfg, pin_dir, keep_pins: false, alerts_path, stderr_path, stdout_path, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = fs::read_to_string(&g.stderr_path).unwrap_or_default();
            if log.contains("guard running") {
                return Ok(g);
            }
            // A fatal start-up error is printed as `guard: error: …` (a warning may say "error=").
            if Instant::now() > deadline || log.contains("guard: error:") {
                bail!("guard did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Alerts written so far.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.alerts_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every alert line is one JSON object"))
            .collect()
    }

    /// The exec records it printed (`--events`), in the order it read them.
    pub fn exec_events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.stdout_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "exec")
            .collect()
    }

    /// SIGTERM, wait, remove its pins (ending its enforcement) and return every alert.
    pub fn stop(self) -> Result<Vec<serde_json::Value>> {
        let pins = self.pin_dir.clone();
        let alerts = self.stop_keep_pins()?;
        guard::sensors::process::remove_pins(&pins)?;
        Ok(alerts)
    }

    /// SIGTERM and wait, leaving the pinned programs running (as after a crash or upgrade).
    pub fn stop_keep_pins(mut self) -> Result<Vec<serde_json::Value>> {
        self.keep_pins = true;
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        // Drop kills an agent that does not stop.
        let Some(status) = wait_within(&mut self.child, Duration::from_secs(30))? else {
            bail!("guard did not stop within 30 s of SIGTERM:\n{}", self.log());
        };
        if !status.success() {
            bail!("guard exited with {status}:\n{}", self.log());
        }
        Ok(self.alerts())
    }

    /// SIGKILL (a crash, an OOM kill): nothing is cleaned up, the pins stay. Returns the
    /// alerts it had written.
    pub fn kill_keep_pins(mut self) -> Result<Vec<serde_json::Value>> {
        self.keep_pins = true;
        self.child.kill()?;
        self.child.wait()?;
        Ok(self.alerts())
    }

    /// Program ids it logged at start-up.
    pub fn program_ids(&self) -> Vec<u32> {
        let log = self.log();
        let Some(line) = log.lines().find(|l| l.contains("kernel programs attached")) else { return vec![] };
        let Some(start) = line.find("programs=[").map(|i| i + "programs=".len()) else { return vec![] };
        let end = line[start..].find(']').map(|e| start + e).unwrap_or(line.len());
        line[start + 1..end].split(',').filter_map(|x| x.trim().parse().ok()).collect()
    }
}

impl Drop for GuardProcess {
    /// A test that failed half-way must not leave an agent running or programs pinned (they
    /// would keep judging every later test's notebooks).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.keep_pins {
            let _ = guard::sensors::process::remove_pins(&self.pin_dir);
        }
    }
}

/// One of an alert's `output_fields`.
pub fn field<'a>(a: &'a serde_json::Value, k: &str) -> &'a serde_json::Value {
    &a["output_fields"][k]
}

/// The venv Python with ipykernel and jupyter_client (made by `cargo xtask test`).
pub fn test_python() -> PathBuf {
    std::env::var_os("GUARD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"))
}

/// Outcome of one cell.
#[derive(Debug, serde::Deserialize)]
pub struct CellResult {
    pub cell: usize,
    pub status: String,
    pub stdout: String,
    pub ename: Option<String>,
}

/// The longest a kernel driver may take. A session here takes seconds; one still running
/// after this is stuck, even though each of its own waits (start, each cell) is bounded.
pub const DRIVER_LIMIT: Duration = Duration::from_secs(180);

/// Runs `cells` in a real IPython kernel started inside `cgroup` (as a spawner would), with
/// `notebook` as its session name and `token` as its JUPYTERHUB_API_TOKEN.
pub fn run_notebook(cgroup: &TestCgroup, notebook: &str, token: &str, cells: &[&str]) -> Result<Vec<CellResult>> {
    run_notebook_in(cgroup, None, notebook, token, cells)
}

/// As `run_notebook`, in the network namespace `netns` when given.
pub fn run_notebook_in(
    cgroup: &TestCgroup,
    netns: Option<&str>,
    notebook: &str,
    token: &str,
    cells: &[&str],
) -> Result<Vec<CellResult>> {
    run_notebook_spec(cgroup, netns, token, serde_json::json!({"notebook": notebook, "cells": cells}))
}

/// As `run_notebook_in`, with the driver's whole spec (`py/run_cells.py` says what it takes).
pub fn run_notebook_spec(
    cgroup: &TestCgroup,
    netns: Option<&str>,
    token: &str,
    spec_json: serde_json::Value,
) -> Result<Vec<CellResult>> {
    let dir = TempDir::new("cells")?;
    let spec = dir.0.join("cells.json");
    let results = dir.0.join("results.json");
    fs::write(&spec, serde_json::to_vec(&spec_json)?)?;
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/run_cells.py");
    // `ip netns exec` mounts a fresh /sys, so the cgroup is joined before entering it.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-c").arg(format!(
                "echo $$ > {}; exec ip netns exec {ns} {} {} {} {}",
                cgroup.path.join("cgroup.procs").display(),
                test_python().display(),
                driver.display(),
                spec.display(),
                results.display()
            ));
            c
        }
        None => {
            let mut c = std::process::Command::new(test_python());
            c.arg(&driver).arg(&spec).arg(&results).env("GUARD_CGROUP", &cgroup.path);
            c
        }
    };
    cmd.env("GUARD_TEST_TOKEN", token).current_dir(&dir.0);
    let out = output_within(&mut cmd, DRIVER_LIMIT)
        .context("running the kernel driver (cargo xtask test creates target/pyenv)")?;
    if !out.status.success() {
        bail!("kernel driver failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&fs::read(&results)?)?)
}

/// Two network namespaces made by the test and wired by a veth pair: `notebook` (where the
/// process under test runs) and `world`, which owns every destination address the tests use
/// (a metadata address, private and public-looking addresses, IPv6 ones). Nothing is routed
/// out of them: no packet leaves the test's namespaces.
pub struct TestNet {
    pub notebook: String,
    pub world: String,
}

/// Addresses owned by the `world` namespace.
pub const WORLD_ADDRS: &[&str] = &[
    "169.254.169.254/32",
    "100.100.100.200/32",
    "10.0.0.5/32",
    "10.0.0.53/32",
    "203.0.113.10/32",
    "fd00:ec2::254/128",
    "2001:db8::10/128",
];

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TestNet {
    pub fn new() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id());
        let (a, b) = (format!("nbg-nb-{tag}"), format!("nbg-world-{tag}"));
        let (va, vb) = (format!("nbga{tag}"), format!("nbgb{tag}"));
        let net = Self { notebook: a.clone(), world: b.clone() };
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        ip(&["link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b])?;
        for (ns, dev, v4, v6) in
            [(&a, &va, "10.200.0.2/24", "fd00:200::2/64"), (&b, &vb, "10.200.0.1/24", "fd00:200::1/64")]
        {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // ICMP datagram sockets open to every group, as containerd 2 and Docker set up pods.
        let ping = "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range";
        let out = std::process::Command::new("ip").args(["netns", "exec", &a, "sh", "-c", ping]).output()?;
        if !out.status.success() {
            bail!("opening ping sockets in {a}: {}", String::from_utf8_lossy(&out.stderr));
        }
        ip(&["-n", &a, "route", "add", "default", "via", "10.200.0.1"])?;
        ip(&["-n", &a, "-6", "route", "add", "default", "via", "fd00:200::1"])?;
        for addr in WORLD_ADDRS {
            let mut args = vec!["-n", b.as_str(), "addr", "add", addr, "dev", "lo"];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        Ok(net)
    }

    /// Runs `cmd` in the notebook namespace, inside `cgroup`: a shell joins the cgroup, then
    /// `ip netns exec` enters the namespace and execs the command.
    pub fn run_in(&self, cgroup: &TestCgroup, cmd: &[&str]) -> Result<String> {
        let quoted: Vec<String> = cmd.iter().map(|c| format!("'{c}'")).collect();
        let script = format!(
            "echo $$ > {}; exec ip netns exec {} {}",
            cgroup.path.join("cgroup.procs").display(),
            self.notebook,
            quoted.join(" ")
        );
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(script).output()?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.notebook]);
        let _ = ip(&["netns", "del", &self.world]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_kills_a_hung_child_and_its_group_and_keeps_what_it_printed() {
        let dir = TempDir::new("within").unwrap();
        let pidfile = dir.0.join("bg.pid");
        let script = format!("sleep 60 & echo $! > {}; echo started; wait", pidfile.display());
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        let t0 = Instant::now();
        let err = output_within(&mut cmd, Duration::from_millis(500)).unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        assert!(err.contains("did not finish within 0.5 s") && err.contains("started"), "{err}");
        // The background sleep was in the group: it is gone too (a zombie at most until init reaps it).
        let stat = format!("/proc/{}/stat", fs::read_to_string(&pidfile).unwrap().trim());
        let gone = || fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z "));
        let until = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the group's other member still runs: {:?}", fs::read_to_string(&stat));

        let mut ok = std::process::Command::new("/bin/sh");
        ok.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output_within(&mut ok, Duration::from_secs(30)).unwrap();
        assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
    }

    #[test]
    fn leftovers_are_known_by_the_names_this_harness_gives_and_nothing_else() {
        assert_eq!(creator_pid("burst-28999-1"), Some(28999));
        assert_eq!(creator_pid("exec-fit-28999-2"), Some(28999));
        assert_eq!(creator_pid("nbg-test-21451-2"), Some(21451));
        assert_eq!(creator_pid("jupyter-nbtest31192x1.service"), Some(31192));
        for other in
            ["system.slice", "user-1000.slice", "session-3.scope", "jupyter-alice.service", "kubepods.slice", "a-b-1"]
        {
            assert_eq!(creator_pid(other), None, "{other}");
        }
    }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the agent's listener");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("a request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
