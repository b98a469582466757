//! A real JupyterHub's parts, as `cargo xtask test` installs them, and system users for it.

use std::path::PathBuf;

/// The venv with jupyterhub, jupyter_server and ipykernel, and the proxy, made by
/// `cargo xtask test` (`GUARD_HUB_ENV`, `GUARD_CHP`).
pub fn hub_parts() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let env = std::env::var_os("GUARD_HUB_ENV").map(PathBuf::from).unwrap_or(root.join("hubenv"));
    let chp = std::env::var_os("GUARD_CHP")
        .map(PathBuf::from)
        .unwrap_or(root.join("chp/node_modules/.bin/configurable-http-proxy"));
    assert!(env.join("bin/jupyterhub").exists(), "{} has no jupyterhub (cargo xtask test makes it)", env.display());
    assert!(chp.exists(), "{} is missing (cargo xtask test installs it)", chp.display());
    (env, chp)
}

/// A system user with a home directory, removed on drop.
pub struct SystemUser(pub String);

impl SystemUser {
    pub fn new(tag: char) -> Self {
        let name = format!("nbh{}{tag}", std::process::id());
        let _ = std::process::Command::new("userdel").args(["-r", &name]).output();
        let out = std::process::Command::new("useradd").args(["-m", "-s", "/bin/bash", &name]).output().unwrap();
        assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
        Self(name)
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill").args(["-KILL", "-u", &self.0]).output();
        let _ = std::process::Command::new("userdel").args(["-r", &self.0]).output();
    }
}
