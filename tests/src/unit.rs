//! Notebook servers started the way TLJH / SystemdSpawner start them: by a supervisor (`unitd`,
//! a stand-in for systemd) that makes the unit's cgroup and starts the server inside it as the
//! notebook's uid. Restarting removes the cgroup and makes it again, as `systemctl restart` does.

use std::{
    io::{BufRead, BufReader, Lines},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use guard::discovery::cgroup::find_cgroup2_mount;
use nix::{sys::signal::Signal, unistd::Pid};

use crate::{wait_within, TempDir};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// uid and gid notebooks run as (docker-stacks' `NB_UID` and `users` group).
pub const NB_UID: u32 = 1000;
pub const NB_GID: u32 = 100;

/// The embedded default policy with `unitd` as a launcher (it stands for systemd), monitoring,
/// with `enforce_user`'s notebooks enforced (tests run side by side, and every agent sees every
/// test's notebooks).
pub fn unit_policy(enforce_user: Option<&str>) -> String {
    let default = guard::policy::Policy::default_policy();
    let mut launchers: Vec<String> = default.launchers.iter().cloned().collect();
    launchers.push("unitd".into());
    let overrides = match enforce_user {
        Some(u) => format!("overrides:\n  - name: under-test\n    match: {{users: [{u}]}}\n    mode: enforce\n"),
        None => String::new(),
    };
    let launchers = serde_json::to_string(&launchers).expect("a list of strings is JSON");
    format!("mode: monitor\nlaunchers: {launchers}\n{overrides}")
}

/// The supervisor binary, built with the tests (target/debug/unitd).
pub fn unitd_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).map(|d| d.join("unitd")).expect("target dir")
}

/// A TLJH-shaped unit, `system.slice/jupyter-<user>.service`, run by `unitd`.
pub struct Unit {
    pub user: String,
    /// Path relative to the cgroup2 root, as alerts name it.
    pub rel: PathBuf,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Incarnations so far: their cgroup ids, in order.
    pub ids: Vec<u64>,
    pub log_path: PathBuf,
    pub dir: TempDir,
}

impl Unit {
    /// A fresh user name (the unit is `jupyter-<user>.service`), for a policy written before
    /// the unit starts. The harness's leftover sweep knows this shape (`nbtest<pid>x<n>`).
    pub fn new_user() -> String {
        format!("nbtest{}x{}", std::process::id(), 1000 + NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Starts `argv` as uid 1000 in the unit of `user` (inside network namespace `netns` if
    /// given), and waits for its first incarnation.
    pub fn start(user: &str, argv: &[&str], netns: Option<&str>) -> Result<Self> {
        let rel = PathBuf::from(format!("/system.slice/jupyter-{user}.service"));
        Self::start_in(&rel, (NB_UID, NB_GID), user, argv, netns)
    }

    /// As `start`, in the cgroup `rel` (relative to the cgroup2 root) as `uid_gid`.
    pub fn start_in(
        rel: &Path,
        (uid, gid): (u32, u32),
        user: &str,
        argv: &[&str],
        netns: Option<&str>,
    ) -> Result<Self> {
        Self::start_env(rel, (uid, gid), user, argv, netns, &[])
    }

    /// As `start_in`, with `env` added to (or replacing) the unit's environment.
    pub fn start_env(
        rel: &Path,
        (uid, gid): (u32, u32),
        user: &str,
        argv: &[&str],
        netns: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let (user, rel) = (user.to_string(), rel.to_path_buf());
        let cgroup = find_cgroup2_mount()?.join(rel.strip_prefix("/")?);
        let dir = TempDir::new("unit")?;
        let log_path = dir.0.join("unit.log");
        let mut child = Command::new(unitd_bin())
            .arg(&cgroup)
            .args([uid.to_string(), gid.to_string(), netns.unwrap_or("-").to_string()])
            .arg(&log_path)
            .arg("--")
            .args(argv)
            .envs(env.iter().map(|(k, v)| (format!("UNIT_ENV_{k}"), *v)))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting unitd (built with the tests)")?;
        let lines = BufReader::new(child.stdout.take().context("unitd stdout")?).lines();
        let mut u = Self { user, rel, child, lines, ids: Vec::new(), log_path, dir };
        u.next_incarnation()?;
        Ok(u)
    }

    fn next_incarnation(&mut self) -> Result<u64> {
        let line = self.lines.next().context("unitd ended")??;
        let id = line.split_whitespace().nth(2).and_then(|s| s.parse().ok());
        let Some(id) = id else { bail!("unitd said {line:?}") };
        self.ids.push(id);
        Ok(id)
    }

    /// `systemctl restart`: the cgroup is removed and made again at once (or after 1.2 s);
    /// returns the new incarnation's cgroup id.
    pub fn restart(&mut self, pause: bool) -> Result<u64> {
        let sig = if pause { Signal::SIGUSR1 } else { Signal::SIGHUP };
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), sig)?;
        self.next_incarnation()
    }

    /// What the unit's processes printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the unit's output has a line containing `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let log = self.log();
            if let Some(l) = log.lines().find(|l| l.contains(needle)) {
                return Ok(l.to_string());
            }
            if std::time::Instant::now() > deadline {
                bail!("no line with {needle:?} within {limit:?}; the unit printed:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if !matches!(wait_within(&mut self.child, Duration::from_secs(15)), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The hub venv (`cargo xtask test` makes it): jupyter_server, ipykernel and the libraries the
/// tests' notebooks use, from Debian's /usr/bin/python3.
pub fn hub_env() -> PathBuf {
    std::env::var_os("GUARD_HUB_ENV")
        .map(PathBuf::from)
        .unwrap_or(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/hubenv"))
}

/// A Jupyter server (jupyter_server from the hub venv) for `user`, as its TLJH-shaped unit,
/// listening on 127.0.0.1:`port` in `netns` with `token`; its notebooks, home and runtime
/// files in `dir` (given to the notebook's uid).
pub fn jupyter_server(user: &str, port: u16, token: &str, netns: &str, dir: &TempDir) -> Unit {
    jupyter_server_env(user, port, token, netns, dir, &[])
}

/// As [`jupyter_server`], with more environment for the server (what its spawner sets, such as
/// `JUPYTERHUB_API_URL`).
pub fn jupyter_server_env(
    user: &str,
    port: u16,
    token: &str,
    netns: &str,
    dir: &TempDir,
    extra: &[(&str, &str)],
) -> Unit {
    nix::unistd::chown(&dir.0, Some(NB_UID.into()), Some(NB_GID.into())).expect("chown the server's dir");
    let exe = hub_env().join("bin/jupyter-server");
    let (port_arg, token_arg, root_arg) = (
        format!("--ServerApp.port={port}"),
        format!("--IdentityProvider.token={token}"),
        format!("--ServerApp.root_dir={}", dir.0.display()),
    );
    let argv = [
        exe.to_str().expect("a UTF-8 path"),
        "--ServerApp.ip=127.0.0.1",
        &port_arg,
        "--ServerApp.port_retries=0",
        &token_arg,
        &root_arg,
        "--ServerApp.open_browser=False",
    ];
    let rel = PathBuf::from(format!("/system.slice/jupyter-{user}.service"));
    let home = dir.0.display().to_string();
    let runtime = dir.0.join("runtime").display().to_string();
    let mut env = vec![("HOME", home.as_str()), ("JUPYTER_RUNTIME_DIR", runtime.as_str())];
    env.extend_from_slice(extra);
    Unit::start_env(&rel, (NB_UID, NB_GID), user, &argv, Some(netns), &env).expect("start the server's unit")
}
