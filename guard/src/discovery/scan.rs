//! Finds notebook-shaped cgroups on the node: the Kubernetes pod hierarchy, TLJH /
//! SystemdSpawner units, DockerSpawner scopes, and a pod's own cgroup by UID.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::workload::{parse, Workload};

/// Top-level directories under which kubelet puts pods.
pub const KUBEPODS: &[&str] = &["kubepods.slice", "kubepods"];

/// cgroups to watch: the kubepods roots (when `kube`), TLJH/SystemdSpawner units (when
/// `tljh`), Docker scopes (when `docker`). Paths are absolute on the cgroup2 mount.
pub fn notebook_cgroups(mount: &Path, kube: bool, tljh: bool, docker: bool) -> Vec<(PathBuf, Workload)> {
    let mut out = Vec::new();
    if kube {
        for k in KUBEPODS {
            let p = mount.join(k);
            if p.is_dir() {
                out.push((p, Workload::Other));
            }
        }
    }
    if tljh || docker {
        // The slice itself is watched too: a unit created a moment ago is covered from its
        // first exec, before a scan finds it (attribution filters out other services).
        let slice = mount.join("system.slice");
        if slice.is_dir() {
            out.push((slice, Workload::Other));
        }
        for slice in ["system.slice", "docker"] {
            let Ok(entries) = fs::read_dir(mount.join(slice)) else { continue };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let rel = Path::new("/").join(slice).join(e.file_name());
                match parse(&rel) {
                    w @ (Workload::Tljh { .. } | Workload::SystemdSpawner { .. }) if tljh => out.push((e.path(), w)),
                    w @ Workload::Docker { .. } if docker => out.push((e.path(), w)),
                    _ => {}
                }
            }
        }
    }
    out
}

/// The pod-level cgroup of pod `uid` (it exists before any container of the pod starts).
pub fn find_pod_cgroup(mount: &Path, uid: &str) -> Option<PathBuf> {
    let underscored = uid.replace('-', "_");
    let wanted = |name: &str| {
        name == format!("pod{uid}")
            || name.ends_with(&format!("-pod{underscored}.slice"))
            || name.ends_with(&format!("-pod{uid}.slice"))
    };
    for k in KUBEPODS {
        let root = mount.join(k);
        // pod dirs sit at depth 1 (guaranteed) or 2 (burstable / besteffort).
        let mut dirs = vec![root.clone()];
        for q in ["burstable", "besteffort", "kubepods-burstable.slice", "kubepods-besteffort.slice"] {
            dirs.push(root.join(q));
        }
        for d in dirs {
            let Ok(entries) = fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                if wanted(&e.file_name().to_string_lossy()) {
                    return Some(e.path());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_units_scopes_and_pods_in_a_tree() {
        let m = std::env::temp_dir().join(format!("guard-scan-{}", std::process::id()));
        let _ = fs::remove_dir_all(&m);
        let uid = "3bc51062-1f2e-4c4d-9a8b-0123456789ab";
        let id = "a".repeat(64);
        for d in [
            "system.slice/jupyter-alice.service".to_string(),
            "system.slice/sshd.service".to_string(),
            format!("system.slice/docker-{id}.scope"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        ] {
            fs::create_dir_all(m.join(d)).unwrap();
        }
        let found = notebook_cgroups(&m, true, true, true);
        let names: Vec<String> = found.iter().map(|(p, _)| p.strip_prefix(&m).unwrap().display().to_string()).collect();
        assert!(names.contains(&"kubepods.slice".to_string()));
        assert!(names.contains(&"system.slice".to_string()));
        assert!(names.contains(&"system.slice/jupyter-alice.service".to_string()));
        assert!(names.contains(&format!("system.slice/docker-{id}.scope")));
        assert!(!names.iter().any(|n| n.contains("sshd")));
        assert!(notebook_cgroups(&m, false, true, false)
            .iter()
            .all(|(p, w)| matches!(w, Workload::Tljh { .. }) || p.ends_with("system.slice")));
        let pod = find_pod_cgroup(&m, uid).unwrap();
        assert!(pod.ends_with(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))));
        assert_eq!(find_pod_cgroup(&m, "00000000-0000-0000-0000-000000000000"), None);
        fs::remove_dir_all(&m).unwrap();
    }
}
