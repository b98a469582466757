//! `guard run` as a test starts it: its own policy file, pin directory and outputs.

use crate::*;

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
            .env("RUST_LOG", std::env::var("GUARD_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(fs::File::create(&stdout_path)?)
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting guard (built by cargo xtask test)")?;
        let g =
            Self { child, config: cfg, pin_dir, keep_pins: false, alerts_path, stderr_path, stdout_path, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30) * time_scale();
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

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        guard::sensors::pins::remove_pins(&pins)?;
        Ok(alerts)
    }

    /// SIGTERM and wait, leaving the pinned programs running (as after a crash or upgrade).
    pub fn stop_keep_pins(mut self) -> Result<Vec<serde_json::Value>> {
        self.keep_pins = true;
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        // Drop kills an agent that does not stop.
        let limit = Duration::from_secs(30) * time_scale();
        let Some(status) = wait_within(&mut self.child, limit)? else {
            bail!("guard did not stop within {} s of SIGTERM:\n{}", limit.as_secs(), self.log());
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
            let _ = guard::sensors::pins::remove_pins(&self.pin_dir);
        }
    }
}

/// One of an alert's `output_fields`.
pub fn field<'a>(a: &'a serde_json::Value, k: &str) -> &'a serde_json::Value {
    &a["output_fields"][k]
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

/// How much longer than usual the agent may take to start and stop: `GUARD_TEST_TIME_SCALE`
/// (the kernel matrix's guests run under software emulation, some five times slower).
pub fn time_scale() -> u32 {
    std::env::var("GUARD_TEST_TIME_SCALE").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}
