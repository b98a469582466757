//! What a cgroup path says about the workload in it: a Kubernetes pod container (kubelet's
//! systemd or cgroupfs driver, containerd / CRI-O / Docker), a TLJH or SystemdSpawner unit, or a
//! DockerSpawner container. Pure parsing; no I/O.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// cgroupfs driver: a bare container id, runtime not named in the path.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A pod (and, below the pod level, one of its containers).
    KubePod {
        pod_uid: String,
        qos: Qos,
        container_id: Option<String>,
        runtime: Option<Runtime>,
    },
    /// The Littlest JupyterHub: `jupyter-<user>.service`.
    Tljh {
        user: String,
    },
    /// SystemdSpawner: `jupyter-<user>-singleuser.service`.
    SystemdSpawner {
        user: String,
    },
    /// A Docker container outside Kubernetes (DockerSpawner names them `jupyter-<user>`; the
    /// user comes from the container's `JUPYTERHUB_USER`).
    Docker {
        container_id: String,
    },
    Other,
}

/// Parses a cgroup path (relative to the cgroup2 root, or absolute on the cgroup2 mount).
pub fn parse(path: &Path) -> Workload {
    let comps: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if let Some(w) = parse_kube(&comps) {
        return w;
    }
    for c in comps.iter().rev() {
        if let Some(unit) = c.strip_suffix(".service") {
            let unit = systemd_unescape(unit);
            if let Some(rest) = unit.strip_prefix("jupyter-") {
                if let Some(user) = rest.strip_suffix("-singleuser") {
                    return Workload::SystemdSpawner { user: user.to_string() };
                }
                return Workload::Tljh { user: rest.to_string() };
            }
        }
        if let Some(id) = c.strip_prefix("docker-").and_then(|s| s.strip_suffix(".scope")) {
            if is_container_id(id) {
                return Workload::Docker { container_id: id.to_string() };
            }
        }
    }
    // cgroupfs Docker: /docker/<id>
    if let Some(i) = comps.iter().position(|c| c == "docker") {
        if let Some(id) = comps.get(i + 1).filter(|id| is_container_id(id)) {
            return Workload::Docker { container_id: id.clone() };
        }
    }
    Workload::Other
}

fn parse_kube(comps: &[String]) -> Option<Workload> {
    let start = comps.iter().position(|c| c == "kubepods" || c == "kubepods.slice")?;
    let mut qos = Qos::Guaranteed;
    for (i, c) in comps.iter().enumerate().skip(start + 1) {
        match c.as_str() {
            "burstable" | "kubepods-burstable.slice" => qos = Qos::Burstable,
            "besteffort" | "kubepods-besteffort.slice" => qos = Qos::BestEffort,
            _ => {}
        }
        let uid = if let Some(s) = c.strip_suffix(".slice") {
            // kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice (dashes as underscores)
            s.rsplit_once("-pod").map(|(_, u)| u.replace('_', "-"))
        } else {
            c.strip_prefix("pod").map(str::to_string)
        };
        let Some(uid) = uid.filter(|u| is_uid(u)) else {
            continue;
        };
        let (container_id, runtime) = match comps.get(i + 1) {
            Some(ctr) => match parse_container(ctr) {
                Some((id, rt)) => (Some(id), Some(rt)),
                None => (None, None),
            },
            None => (None, None),
        };
        return Some(Workload::KubePod { pod_uid: uid, qos, container_id, runtime });
    }
    None
}

fn parse_container(c: &str) -> Option<(String, Runtime)> {
    if let Some(s) = c.strip_suffix(".scope") {
        for (prefix, rt) in
            [("cri-containerd-", Runtime::Containerd), ("crio-", Runtime::CriO), ("docker-", Runtime::Docker)]
        {
            if let Some(id) = s.strip_prefix(prefix) {
                // crio-conmon-<id>.scope is CRI-O's monitor process, not the container.
                if is_container_id(id) {
                    return Some((id.to_string(), rt));
                }
            }
        }
        return None;
    }
    is_container_id(c).then(|| (c.to_string(), Runtime::Unknown))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uid(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// systemd unit names escape bytes as `\xNN` (e.g. `-` in a user name as `\x2d`).
pub fn systemd_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = s.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3bc51062-1f2e-4c4d-9a8b-0123456789ab";
    const ID: &str = "4f7c1a9e0b3d5c7e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70";

    fn kube(qos: Qos, ctr: Option<(&str, Runtime)>) -> Workload {
        Workload::KubePod {
            pod_uid: UID.into(),
            qos,
            container_id: ctr.map(|c| c.0.to_string()),
            runtime: ctr.map(|c| c.1),
        }
    }

    #[test]
    fn kubelet_systemd_driver_all_qos_and_runtimes() {
        let u = UID.replace('-', "_");
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(Path::new(&p)), kube(Qos::Burstable, Some((ID, Runtime::Containerd))));
        let p = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope");
        assert_eq!(parse(Path::new(&p)), kube(Qos::BestEffort, Some((ID, Runtime::CriO))));
        let p = format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope");
        assert_eq!(parse(Path::new(&p)), kube(Qos::Guaranteed, Some((ID, Runtime::Docker))));
        let p = format!("/kubepods.slice/kubepods-pod{u}.slice");
        assert_eq!(parse(Path::new(&p)), kube(Qos::Guaranteed, None));
        let p = format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope");
        assert_eq!(parse(Path::new(&p)), kube(Qos::Guaranteed, None));
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(parse(Path::new(&p)), kube(Qos::Burstable, Some((ID, Runtime::Unknown))));
        let p = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(parse(Path::new(&p)), kube(Qos::Guaranteed, Some((ID, Runtime::Unknown))));
        let p = format!("/kubepods/besteffort/pod{UID}");
        assert_eq!(parse(Path::new(&p)), kube(Qos::BestEffort, None));
    }

    #[test]
    fn spawners_without_kubernetes() {
        assert_eq!(parse(Path::new("/system.slice/jupyter-alice.service")), Workload::Tljh { user: "alice".into() });
        assert_eq!(
            parse(Path::new("/system.slice/jupyter-bob\\x2dsmith.service")),
            Workload::Tljh { user: "bob-smith".into() }
        );
        assert_eq!(
            parse(Path::new("/system.slice/jupyter-carol-singleuser.service")),
            Workload::SystemdSpawner { user: "carol".into() }
        );
        assert_eq!(
            parse(Path::new(&format!("/system.slice/docker-{ID}.scope"))),
            Workload::Docker { container_id: ID.into() }
        );
        assert_eq!(parse(Path::new(&format!("/docker/{ID}"))), Workload::Docker { container_id: ID.into() });
        assert_eq!(parse(Path::new("/system.slice/jupyterhub.service")), Workload::Other);
        assert_eq!(parse(Path::new("/user.slice/user-0.slice/session-1.scope")), Workload::Other);
        assert_eq!(parse(Path::new("/")), Workload::Other);
    }
}
