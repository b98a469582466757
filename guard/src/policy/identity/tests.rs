use std::fs;

use super::*;

#[test]
fn resolves_interpreters_through_symlinks_inside_the_root() {
    let dir = std::env::temp_dir().join(format!("guard-root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    fs::create_dir_all(dir.join("opt/conda/bin")).unwrap();
    fs::copy("/bin/true", dir.join("usr/bin/python3.12")).unwrap();
    // An absolute symlink: must resolve inside the root, not on the host.
    std::os::unix::fs::symlink("/usr/bin/python3.12", dir.join("usr/bin/python3")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3.12", dir.join("opt/conda/bin/python3")).unwrap();
    fs::copy("/bin/true", dir.join("usr/bin/bash")).unwrap();
    let (_, root) = Root::open(&dir).unwrap();
    let ids = RootIdentities::resolve(root, &Policy::default_policy());
    let py = FileId::of(&fs::metadata(dir.join("usr/bin/python3.12")).unwrap());
    assert_eq!(ids.python, crate::IdSet::from_iter([py]));
    let bash = FileId::of(&fs::metadata(dir.join("usr/bin/bash")).unwrap());
    assert!(!ids.python.contains(&bash));
    let mut ids = ids;
    let content = fs::read(dir.join("usr/bin/bash")).unwrap();
    // Both files are copies of /bin/true: content lookup finds one of them.
    assert!(ids.system_same_content(&content).is_some());
    assert!(ids.system_names(&py).unwrap().contains(&"python3".to_string()));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn globs_follow_a_containers_absolute_symlinks_inside_it() {
    // conda images often link /opt/conda to an absolute path; on the host that path is
    // somewhere else, or nowhere.
    let dir = std::env::temp_dir().join(format!("guard-root-glob-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let inside = format!("/nbg-test-conda-{}", std::process::id());
    assert!(!Path::new(&inside).exists());
    fs::create_dir_all(dir.join(&inside[1..]).join("bin")).unwrap();
    fs::create_dir_all(dir.join("opt")).unwrap();
    std::os::unix::fs::symlink(&inside, dir.join("opt/conda")).unwrap();
    for name in ["python3.11", "python3", "pip"] {
        fs::copy("/bin/true", dir.join(&inside[1..]).join("bin").join(name)).unwrap();
    }
    let (_, root) = Root::open(&dir).unwrap();
    assert_eq!(
        root.glob("/opt/conda/bin/python3*"),
        vec![PathBuf::from("/opt/conda/bin/python3"), PathBuf::from("/opt/conda/bin/python3.11")]
    );
    // Literal components are kept as they are; wildcard ones only match what exists.
    assert_eq!(root.glob("/opt/conda/envs/*/bin/python3*"), Vec::<PathBuf>::new());
    assert_eq!(root.glob("/usr/bin/uname"), vec![PathBuf::from("/usr/bin/uname")]);
    let ids = RootIdentities::resolve(root, &Policy::default_policy());
    let py = FileId::of(&fs::metadata(dir.join(&inside[1..]).join("bin/python3.11")).unwrap());
    assert!(ids.python.contains(&py));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_merged_usr_is_indexed_once() {
    let dir = std::env::temp_dir().join(format!("guard-root-merged-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    fs::copy("/bin/true", dir.join("usr/bin/dash")).unwrap();
    std::os::unix::fs::symlink("dash", dir.join("usr/bin/sh")).unwrap();
    let (_, root) = Root::open(&dir).unwrap();
    let mut ids = RootIdentities::resolve(root, &Policy::default_policy());
    let dash = FileId::of(&fs::metadata(dir.join("usr/bin/dash")).unwrap());
    let names = ids.system_names(&dash).unwrap();
    assert_eq!(names.len(), 2, "dash and sh, each once: {names:?}");
    let copies: usize = ids.system().by_size.values().map(Vec::len).sum();
    assert_eq!(copies, 1, "/usr/bin/dash, not again as /bin/dash");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_root_whose_path_went_away_still_resolves() {
    // The path is usually /proc/<pid>/root: it stops resolving when that process exits,
    // possibly between opening the root and resolving it.
    let dir = std::env::temp_dir().join(format!("guard-root-gone-{}", std::process::id()));
    let moved = dir.with_extension("moved");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&moved);
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    fs::copy("/bin/true", dir.join("usr/bin/python3.12")).unwrap();
    let (_, root) = Root::open(&dir).unwrap();
    fs::rename(&dir, &moved).unwrap();
    let mut ids = RootIdentities::resolve(root, &Policy::default_policy());
    let py = FileId::of(&fs::metadata(moved.join("usr/bin/python3.12")).unwrap());
    assert_eq!(ids.python, crate::IdSet::from_iter([py]));
    assert!(ids.system_names(&py).is_some(), "the system index is built through the open root too");
    fs::remove_dir_all(&moved).unwrap();
}

#[test]
fn a_refresh_after_the_first_process_exited_sees_new_interpreters() -> std::io::Result<()> {
    // A root is first opened through /proc/<pid>/root of whatever process exec'd first;
    // by the time a new env's Python shows up, that process has long exited.
    let tmp = std::env::temp_dir().join(format!("guard-refresh-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let root_dir = tmp.join("proc/42/root");
    fs::create_dir_all(root_dir.join("usr/bin"))?;
    fs::copy("/bin/true", root_dir.join("usr/bin/python3.12"))?;
    let policy = Policy::default_policy();
    let mut ids = Identities::default();
    let (key, _) = ids.for_cgroup(7, &[42], &policy, &tmp.join("proc")).expect("root opened");
    let kept = tmp.join("kept-root");
    fs::rename(&root_dir, &kept)?;
    fs::copy("/bin/true", kept.join("usr/bin/python3.13"))?;
    let fresh = ids.refresh(key, &policy).expect("refreshed through the open root");
    let new = FileId::of(&fs::metadata(kept.join("usr/bin/python3.13"))?);
    assert!(fresh.python.contains(&new), "the new interpreter is known after the refresh");
    fs::remove_dir_all(&tmp)
}
