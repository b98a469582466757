//! Notebook pods as real containers: the notebook image (`cargo xtask test` builds it with
//! mmdebstrap: Debian plus jupyter_server and ipykernel in an /opt/conda owned by uid 1000) as
//! the lower layer of an overlay root, run by runc with their own PID, mount, IPC and UTS
//! namespaces as uid 1000 with a fresh home volume, inside a kubelet-shaped pod cgroup
//! (systemd or cgroupfs driver) and a test network namespace. A real Jupyter server runs in
//! it; kernels are started through its sessions API.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use guard::discovery::cgroup::find_cgroup2_mount;
use serde_json::{json, Value};

use crate::{output_within, unit::NB_GID, unit::NB_UID, CellResult, TempDir};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The notebook image's root file system (`GUARD_NOTEBOOK_IMAGE`, made by `cargo xtask test`).
pub fn image() -> PathBuf {
    let p = std::env::var_os("GUARD_NOTEBOOK_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/images/notebook/rootfs"));
    assert!(
        p.join("opt/conda/bin/jupyter-server").exists(),
        "{} is not built (cargo xtask test builds it)",
        p.display()
    );
    p
}

/// How kubelet names cgroups.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`
    Systemd,
    /// `kubepods/burstable/pod<uid>/<id>`
    Cgroupfs,
}

pub const TOKEN: &str = "pod-server-token-8c1d0e";

/// The capabilities containerd and Docker give a container by default.
pub const RUNTIME_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// How a pod's notebook container is started, beyond the usual shape (uid 1000,
/// `noNewPrivileges`, no token, no seccomp filter).
#[derive(Clone, Debug, Default)]
pub struct PodOptions {
    /// OCI `linux.seccomp`.
    pub seccomp: Option<Value>,
    /// Run as uid 0 (the server with `--allow-root`).
    pub root: bool,
    /// `noNewPrivileges: false`.
    pub privilege_escalation: bool,
    /// A service-account token mounted where kubelet puts it.
    pub service_account_token: bool,
    /// More arguments for the Jupyter server.
    pub server_args: Vec<String>,
    /// The home volume in memory (an `emptyDir` with `medium: Memory`: tmpfs).
    pub memory_home: bool,
}

pub struct Pod {
    pub name: String,
    pub uid: String,
    pub user: String,
    pub container_id: String,
    /// Where its Jupyter server listens (pods may share the test's network namespace).
    pub port: u16,
    /// Pod-level and container cgroups, relative to the cgroup2 root.
    pub pod_cgroup: PathBuf,
    pub ctr_cgroup: PathBuf,
    /// The home volume as the host sees it.
    pub home: PathBuf,
    /// The container's writable overlay layer as the host sees it.
    pub upper: PathBuf,
    runc_id: String,
    state: PathBuf,
    rootfs: PathBuf,
    pub dir: TempDir,
}

fn hex_id(n: u32) -> String {
    format!("{:08x}{:08x}", std::process::id(), n).repeat(4)
}

impl Pod {
    /// A pod of `user`'s notebook: names and ids only; `manifest` is what the API serves.
    pub fn new(name: &str, user: &str, driver: Driver) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{:08x}-{:04x}-4000-8000-{:012x}", std::process::id(), n, n);
        let container_id = hex_id(n);
        let pod_cgroup = match driver {
            Driver::Systemd => PathBuf::from(format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            )),
            Driver::Cgroupfs => PathBuf::from(format!("/kubepods/burstable/pod{uid}")),
        };
        let ctr_cgroup = match driver {
            Driver::Systemd => pod_cgroup.join(format!("cri-containerd-{container_id}.scope")),
            Driver::Cgroupfs => pod_cgroup.join(&container_id),
        };
        let dir = TempDir::new("pod")?;
        let home = dir.0.join("home");
        let upper = dir.0.join("upper");
        let rootfs = dir.0.join("bundle/rootfs");
        Ok(Self {
            name: name.into(),
            uid,
            user: user.into(),
            container_id,
            port: 8800 + (n % 100) as u16,
            pod_cgroup,
            ctr_cgroup,
            home,
            upper,
            runc_id: format!("nbg-pod-{}-{n}", std::process::id()),
            state: dir.0.join("runc"),
            rootfs,
            dir,
        })
    }

    /// The pod as the API server serves it (Z2JH's labels and annotations).
    pub fn manifest(&self) -> Value {
        crate::fake_kube::notebook_pod(&self.name, &self.uid, &self.user, "", &self.container_id, &"0".repeat(64))
    }

    /// Makes the pod's cgroups, as kubelet does before any container starts.
    pub fn prepare(&self) -> Result<()> {
        let mount = find_cgroup2_mount()?;
        fs::create_dir_all(mount.join(self.ctr_cgroup.strip_prefix("/")?))?;
        Ok(())
    }

    /// Makes the pod cgroup, mounts the overlay root and starts the Jupyter server container in
    /// network namespace `netns`.
    pub fn start(&self, netns: &str) -> Result<()> {
        self.start_with(netns, None)
    }

    /// As `start`, under seccomp profile `seccomp` (OCI `linux.seccomp`) when given.
    pub fn start_with(&self, netns: &str, seccomp: Option<&Value>) -> Result<()> {
        self.start_opts(netns, &PodOptions { seccomp: seccomp.cloned(), ..PodOptions::default() })
    }

    /// As `start`, shaped by `opts`.
    pub fn start_opts(&self, netns: &str, opts: &PodOptions) -> Result<()> {
        let seccomp = opts.seccomp.as_ref();
        self.prepare()?;
        let mount = find_cgroup2_mount()?;
        for d in [&self.home, &self.upper, &self.dir.0.join("work"), &self.rootfs] {
            fs::create_dir_all(d)?;
        }
        if opts.memory_home {
            let out =
                Command::new("mount").args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"]).arg(&self.home).output()?;
            if !out.status.success() {
                bail!("mounting the home volume in memory: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let own = |p: &Path| nix::unistd::chown(p, Some(NB_UID.into()), Some(NB_GID.into()));
        own(&self.home)?;
        let overlay = format!(
            "lowerdir={},upperdir={},workdir={}",
            image().display(),
            self.upper.display(),
            self.dir.0.join("work").display()
        );
        let out =
            Command::new("mount").args(["-t", "overlay", "overlay", "-o", &overlay]).arg(&self.rootfs).output()?;
        if !out.status.success() {
            bail!("mounting the overlay root: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (uid, gid) = if opts.root { (0, 0) } else { (NB_UID, NB_GID) };
        // Root in a container gets the runtime's default capability set (containerd's and
        // Docker's); the notebook user none that matter.
        let caps: &[&str] = if opts.root { RUNTIME_DEFAULT_CAPS } else { &[] };
        let mut args: Vec<String> =
            ["/opt/conda/bin/jupyter-server", "--ServerApp.ip=127.0.0.1"].map(String::from).to_vec();
        args.extend([
            format!("--ServerApp.port={}", self.port),
            "--ServerApp.port_retries=0".into(),
            format!("--IdentityProvider.token={TOKEN}"),
            "--ServerApp.root_dir=/home/jovyan".into(),
            "--ServerApp.open_browser=False".into(),
        ]);
        if opts.root {
            args.push("--allow-root".into());
        }
        args.extend(opts.server_args.iter().cloned());
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
            json!({"destination": "/home/jovyan", "type": "bind", "source": self.home, "options": ["rbind", "rw"]}),
        ];
        if opts.service_account_token {
            // As kubelet mounts a pod's token (a projected volume, read-only).
            let sa = self.dir.0.join("serviceaccount");
            fs::create_dir_all(&sa)?;
            fs::write(sa.join("token"), "eyJhbGciOiJSUzI1NiJ9.test-token.sig")?;
            fs::write(sa.join("namespace"), "jhub")?;
            mounts.push(json!({"destination": "/run/secrets/kubernetes.io/serviceaccount", "type": "bind",
                               "source": sa, "options": ["rbind", "ro"]}));
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": gid},
                "args": args,
                "env": ["PATH=/opt/conda/bin:/usr/local/bin:/usr/bin:/bin", "HOME=/home/jovyan", "LANG=C.UTF-8",
                        format!("JUPYTERHUB_USER={}", self.user),
                        // What a container runtime and kubelet give every pod.
                        format!("HOSTNAME={}", self.name), "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string()],
                "cwd": "/home/jovyan",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": !opts.privilege_escalation,
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": self.name,
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                               {"type": "network", "path": format!("/run/netns/{netns}")}],
                "rootfsPropagation": "rprivate",
            },
        });
        let mut config = config;
        if let Some(profile) = seccomp {
            config["linux"]["seccomp"] = profile.clone();
        }
        fs::write(self.dir.0.join("bundle/config.json"), serde_json::to_vec_pretty(&config)?)?;
        let log = fs::File::create(self.dir.0.join("container.log"))?;
        let mut create = Command::new("runc");
        create.arg("--root").arg(&self.state).args(["create", "--bundle"]).arg(self.dir.0.join("bundle"));
        create.arg(&self.runc_id).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let status = create.status().context("runc (cargo xtask test installs it)")?;
        if !status.success() {
            bail!("runc create: {status}\n{}", self.log());
        }
        // Where a pure cgroup v2 node's runtime puts it: the init process joins the container
        // cgroup before its first instruction.
        let state = output_within(
            Command::new("runc").arg("--root").arg(&self.state).args(["state", &self.runc_id]),
            Duration::from_secs(30),
        )?;
        let pid = serde_json::from_slice::<Value>(&state.stdout)?["pid"].as_u64().context("runc state: no pid")?;
        fs::write(mount.join(self.ctr_cgroup.strip_prefix("/")?).join("cgroup.procs"), pid.to_string())?;
        let out = output_within(
            Command::new("runc").arg("--root").arg(&self.state).args(["start", &self.runc_id]),
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            bail!("runc start: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// What the container printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("container.log")).unwrap_or_default()
    }

    /// Opens a session on `notebook` through the server's sessions API and runs `cells` in its
    /// kernel (the driver runs in `netns`, outside the pod). Returns (kernel id, results).
    pub fn run_cells(&self, netns: &str, notebook: &str, cells: &[&str]) -> Result<(String, Vec<CellResult>)> {
        let spec = json!({"url": format!("http://127.0.0.1:{}", self.port), "token": TOKEN, "notebook": notebook,
                          "cells": cells, "runtime_dir": self.home.join(".local/share/jupyter/runtime")});
        open_session(netns, spec, &self.dir.0).map_err(|e| e.context(format!("container:\n{}", self.log())))
    }

    /// As `run_cells`, leaving the session (and its kernel) open, as a user leaves a notebook.
    pub fn run_cells_open(&self, netns: &str, notebook: &str, cells: &[&str]) -> Result<(String, Vec<CellResult>)> {
        let spec = json!({"url": format!("http://127.0.0.1:{}", self.port), "token": TOKEN, "notebook": notebook,
                          "cells": cells, "runtime_dir": self.home.join(".local/share/jupyter/runtime"), "keep": true});
        open_session(netns, spec, &self.dir.0).map_err(|e| e.context(format!("container:\n{}", self.log())))
    }

    /// Stops and removes the container (as kubelet does when the pod is deleted); the pod
    /// cgroup goes with it.
    pub fn stop(&self) {
        let runc = |args: &[&str]| {
            let _ = Command::new("runc").arg("--root").arg(&self.state).args(args).output();
        };
        runc(&["kill", &self.runc_id, "KILL"]);
        std::thread::sleep(Duration::from_millis(100));
        runc(&["delete", "--force", &self.runc_id]);
        for m in [&self.rootfs, &self.home] {
            let _ = Command::new("umount").arg("-l").arg(m).stderr(Stdio::null()).status();
        }
        if let Ok(mount) = find_cgroup2_mount() {
            for cg in [&self.ctr_cgroup, &self.pod_cgroup] {
                let p = mount.join(cg.strip_prefix("/").unwrap_or(cg));
                let _ = fs::remove_dir(&p);
            }
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `py/server_session.py` with `spec` (what it takes is said there) in network namespace
/// `netns`, its files in `work`: a session opened through a Jupyter server's REST API, cells
/// run in its kernel. Returns (kernel id, results).
pub fn open_session(netns: &str, spec: Value, work: &Path) -> Result<(String, Vec<CellResult>)> {
    let path = work.join(format!("session-{}.json", NEXT.fetch_add(1, Ordering::Relaxed)));
    let results = path.with_extension("out");
    fs::write(&path, spec.to_string())?;
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/server_session.py");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(crate::test_python()).arg(driver).arg(&path).arg(&results);
    let out = output_within(&mut cmd, crate::DRIVER_LIMIT)?;
    if !out.status.success() {
        bail!("session driver: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&fs::read(&results)?)?;
    let kid = v["kernel_id"].as_str().unwrap_or_default().to_string();
    Ok((kid, serde_json::from_value(v["cells"].clone())?))
}
