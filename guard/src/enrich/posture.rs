//! Posture facts of a notebook's server or kernel: what it runs as and under (uid, seccomp,
//! no_new_privs, from /proc), whether a Kubernetes service-account token is in its root, and
//! for a kernel, how its connection file exposes it (transport, address, mode). Read once per
//! server or kernel start; the detector turns them into findings.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::policy::root::Root;

/// Where kubelet mounts a pod's service-account token (the first is a symlink to the second
/// in most images).
pub const TOKEN_PATHS: &[&str] =
    &["/var/run/secrets/kubernetes.io/serviceaccount/token", "/run/secrets/kubernetes.io/serviceaccount/token"];
/// Connection files are small JSON objects.
const CONNECTION_FILE_LIMIT: u64 = 64 << 10;

/// A kernel's connection file, as far as posture goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The path inside the notebook's root.
    pub path: PathBuf,
    pub transport: String,
    pub ip: String,
    pub mode: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostureFacts {
    pub pid: u32,
    /// Real uid.
    pub uid: Option<u32>,
    /// `Seccomp:` of /proc/PID/status: 0 none, 1 strict, 2 filter.
    pub seccomp: Option<u8>,
    pub no_new_privs: Option<bool>,
    /// A service-account token in the root.
    pub token: Option<PathBuf>,
    pub connection: Option<Connection>,
}

/// The facts of process `pid` (its root opened as `root`); `connection_file` for a kernel.
pub fn gather(proc_root: &Path, pid: u32, root: &Root, connection_file: Option<&Path>) -> PostureFacts {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).unwrap_or_default();
    let mut f = status_facts(&status);
    f.pid = pid;
    f.token = TOKEN_PATHS.iter().map(PathBuf::from).find(|p| root.stat(p).is_ok_and(|m| m.is_file()));
    f.connection = connection_file.and_then(|p| connection(root, p));
    f
}

/// uid, seccomp mode and no_new_privs from /proc/PID/status.
pub fn status_facts(status: &str) -> PostureFacts {
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    PostureFacts {
        uid: field("Uid:").and_then(|v| v.split_whitespace().next()?.parse().ok()),
        seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
        no_new_privs: field("NoNewPrivs:").map(|v| v == "1"),
        ..Default::default()
    }
}

fn connection(root: &Root, path: &Path) -> Option<Connection> {
    // Relative paths are the kernel's cwd's; the servers that matter pass absolute ones.
    if !path.is_absolute() {
        return None;
    }
    let mode = root.stat(path).ok()?.permissions().mode() & 0o7777;
    let json: serde_json::Value = serde_json::from_slice(&root.read(path, CONNECTION_FILE_LIMIT).ok()?).ok()?;
    let s = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    Some(Connection { path: path.to_path_buf(), transport: s("transport"), ip: s("ip"), mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_uid_seccomp_and_no_new_privs() {
        let s = "Name:\tpython3\nUid:\t1000\t1000\t1000\t1000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let f = status_facts(s);
        assert_eq!((f.uid, f.seccomp, f.no_new_privs), (Some(1000), Some(2), Some(true)));
        let f = status_facts("Uid:\t0\t0\t0\t0\nNoNewPrivs:\t0\nSeccomp:\t0\n");
        assert_eq!((f.uid, f.seccomp, f.no_new_privs), (Some(0), Some(0), Some(false)));
        assert_eq!(status_facts("garbage"), PostureFacts::default());
    }
}
