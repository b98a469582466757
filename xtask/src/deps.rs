//! What the build and the tests need from the machine: Debian packages, the tests' Python
//! environment and the hub's (JupyterHub, jupyter_server, configurable-http-proxy).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{nix_is_root, run, workspace_root};

/// Debian packages the agent links against: libseccomp (profiles are built and checked with
/// the library the runtimes use). Checked by a file each installs.
pub const BUILD_PACKAGES: &[(&str, &str)] = &[("/usr/include/seccomp.h", "libseccomp-dev")];

/// Debian packages the integration tests drive for real: rsyslog (the syslog sink's receiver),
/// iproute2 (network namespaces for the egress tests) and runc (a real OCI runtime applies the
/// generated seccomp profiles).
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("rsyslogd", "rsyslog"),
    // The kernel matrix: other kernels booted in qemu from a busybox initramfs.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("ip", "iproute2"),
    ("runc", "runc"),
    // Notebooks that run as their own users need an interpreter those users can execute
    // (the toolchain's Python may live under /root), and the hub's proxy runs on node.
    ("/usr/bin/python3", "python3-venv"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("useradd", "passwd"),
    ("mmdebstrap", "mmdebstrap"),
    // A kernel of another language, as hubs offer them: Debian's IRkernel (its kernelspec in
    // /usr/share/jupyter/kernels/ir; R's launcher is a bash wrapper).
    ("/usr/share/jupyter/kernels/ir/kernel.json", "r-cran-irkernel"),
    // What the library survey's notebooks run: nbconvert's pandoc, graphviz's dot (gcc, git and
    // fontconfig's fc-list are on the machine already).
    ("pandoc", "pandoc"),
    ("dot", "graphviz"),
    ("gcc", "gcc"),
    ("git", "git"),
    ("fc-list", "fontconfig"),
];

fn on_path(bin: &str) -> bool {
    if bin.starts_with('/') {
        return Path::new(bin).exists();
    }
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(bin).is_file())
}

/// What users would run instead of notebook-guard: auditd with exec/connect rules, a bpftrace
/// script logging the same.
pub const BENCH_PEERS: &[(&str, &str)] = &[("auditd", "auditd"), ("bpftrace", "bpftrace")];

pub fn ensure_test_packages() -> Result<()> {
    ensure_packages(TEST_PACKAGES)
}

pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted.iter().filter(|(bin, _)| !on_path(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        eprintln!("xtask: warning: {} missing and not root: install them first", missing.join(", "));
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Python packages the notebook tests need (a real kernel via jupyter_client), in a venv
/// under target/ so nothing on the machine changes. Fast when already there.
const PY_PACKAGES: &[&str] = &["ipykernel", "jupyter_client", "kubernetes-validate", "jupyterhub-kubespawner"];

pub fn ensure_python_env() -> Result<PathBuf> {
    let venv = workspace_root().join("target/pyenv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import ipykernel, jupyter_client, kubernetes_validate, kubespawner"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ready {
        return Ok(python);
    }
    eprintln!("xtask: installing {} into {}", PY_PACKAGES.join(", "), venv.display());
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PY_PACKAGES))?;
    Ok(python)
}

/// The hub venv's packages: the hub and server, and the libraries of the survey (tests/survey.rs),
/// which notebooks run as they ordinarily would (`wheel` builds its sdist without isolation).
const HUB_PACKAGES: &[&str] = &[
    "jupyterhub>=5",
    "jupyter_server>=2",
    "ipykernel",
    "jupyter_client",
    "joblib",
    "GitPython",
    "matplotlib",
    "imageio-ffmpeg",
    "graphviz",
    "dask[distributed]",
    "wheel",
];
const HUB_IMPORTS: &str = "import jupyterhub, jupyter_server, ipykernel, jupyter_client, joblib, git, matplotlib, \
    imageio_ffmpeg, graphviz, dask.distributed, wheel";

/// A real JupyterHub for the hub tests: a venv made from Debian's /usr/bin/python3 (users'
/// servers and kernels run from it as those users, so it must not sit behind /root) with
/// jupyterhub, jupyter_server and ipykernel from PyPI, and configurable-http-proxy from npm.
/// Fast when already there.
pub fn ensure_hub() -> Result<(PathBuf, PathBuf)> {
    let venv = workspace_root().join("target/hubenv");
    let chp_dir = workspace_root().join("target/chp");
    let chp = chp_dir.join("node_modules/.bin/configurable-http-proxy");
    let ready =
        Command::new(venv.join("bin/python")).args(["-c", HUB_IMPORTS]).output().is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!("xtask: installing {} into {}", HUB_PACKAGES.join(", "), venv.display());
        if !venv.join("bin/python").exists() {
            run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(HUB_PACKAGES))?;
    }
    if !chp.exists() {
        eprintln!("xtask: installing configurable-http-proxy into {}", chp_dir.display());
        fs::create_dir_all(&chp_dir)?;
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&chp_dir)
            .arg("configurable-http-proxy"))?;
    }
    Ok((venv, chp))
}
