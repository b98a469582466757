//! Finds notebook-shaped cgroups on the node: the Kubernetes pod hierarchy, TLJH /
//! SystemdSpawner units, DockerSpawner scopes, and a pod's own cgroup by UID.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::workload::{parse, Workload};

/// Top-level directories under which kubelet puts pods.
pub const KUBEPODS: &[&str] = &["kubepods.slice", "kubepods"];

/// A cgroup found: its path (absolute on the cgroup2 mount), its shape and its id.
pub type Found = (PathBuf, Workload, u64);

/// One scan: the cgroups not `known` before (with their paths and shapes), and the ids of
/// every cgroup it saw, known or not.
#[derive(Debug, Default)]
pub struct Scan {
    pub new: Vec<Found>,
    pub seen: crate::IdSet<u64>,
}

/// cgroups to watch: the kubepods roots (when `kube`), TLJH/SystemdSpawner units (when
/// `tljh`), Docker scopes (when `docker`).
pub fn notebook_cgroups(mount: &Path, kube: bool, tljh: bool, docker: bool) -> Vec<Found> {
    scan(mount, kube, tljh, docker, &|_| false).new
}

/// [`notebook_cgroups`], where one whose id is `known` is only counted as seen. A node with a
/// thousand notebooks is scanned four times a second: a stat, a path, a name parse and a
/// path hash per unit per scan were most of the agent's CPU there. A unit's id is the inode
/// number its directory entry gives (on cgroup2, a directory's inode number is its cgroup id).
pub fn scan(mount: &Path, kube: bool, tljh: bool, docker: bool, known: &dyn Fn(u64) -> bool) -> Scan {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let mut out = Scan::default();
    let mut root = |p: PathBuf| {
        if let Some(m) = fs::metadata(&p).ok().filter(|m| m.is_dir()) {
            out.seen.insert(m.ino());
            if !known(m.ino()) {
                out.new.push((p, Workload::Other, m.ino()));
            }
        }
    };
    if kube {
        for k in KUBEPODS {
            root(mount.join(k));
        }
    }
    if tljh || docker {
        // The slice itself is watched too: a unit created a moment ago is covered from its
        // first exec, before a scan finds it (attribution filters out other services).
        root(mount.join("system.slice"));
        for slice in ["system.slice", "docker"] {
            let Ok(entries) = fs::read_dir(mount.join(slice)) else { continue };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if known(e.ino()) {
                    out.seen.insert(e.ino());
                    continue;
                }
                let rel = Path::new("/").join(slice).join(e.file_name());
                let wanted = match parse(&rel) {
                    w @ (Workload::Tljh { .. } | Workload::SystemdSpawner { .. }) if tljh => w,
                    w @ Workload::Docker { .. } if docker => w,
                    _ => continue,
                };
                out.seen.insert(e.ino());
                out.new.push((e.path(), wanted, e.ino()));
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
        let names: Vec<String> =
            found.iter().map(|(p, _, _)| p.strip_prefix(&m).unwrap().display().to_string()).collect();
        for (p, _, id) in &found {
            assert_eq!(*id, crate::discovery::cgroup::cgroup_id(p).unwrap(), "{}", p.display());
        }
        assert!(names.contains(&"kubepods.slice".to_string()));
        assert!(names.contains(&"system.slice".to_string()));
        assert!(names.contains(&"system.slice/jupyter-alice.service".to_string()));
        assert!(names.contains(&format!("system.slice/docker-{id}.scope")));
        assert!(!names.iter().any(|n| n.contains("sshd")));
        assert!(notebook_cgroups(&m, false, true, false)
            .iter()
            .all(|(p, w, _)| matches!(w, Workload::Tljh { .. }) || p.ends_with("system.slice")));
        // Known ones are only counted as seen.
        let unit = found.iter().find(|(p, _, _)| p.ends_with("jupyter-alice.service")).unwrap().2;
        let again = scan(&m, true, true, true, &|id| id == unit);
        assert!(again.seen.contains(&unit) && again.new.len() == found.len() - 1);
        let pod = find_pod_cgroup(&m, uid).unwrap();
        assert!(pod.ends_with(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))));
        assert_eq!(find_pod_cgroup(&m, "00000000-0000-0000-0000-000000000000"), None);
        fs::remove_dir_all(&m).unwrap();
    }
}
