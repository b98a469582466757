//! Unit tests of the process table.

use super::*;
use crate::sensors::decode::{FileId, Meta};

fn meta(tgid: u32) -> Meta {
    Meta { ktime_ns: 0, cpu: 0, pid: tgid, tgid, cgroup_id: 1 }
}

fn exec(tgid: u32, ppid: u32, path: &str, argv: &[&str]) -> Exec {
    Exec {
        meta: meta(tgid),
        ppid,
        old_pid: tgid,
        uid: 0,
        gid: 0,
        comm: path.rsplit('/').next().unwrap().into(),
        filename: path.into(),
        filename_truncated: false,
        interp: None,
        interp_truncated: false,
        exe: FileId { dev: 1, ino: 2, ..FileId::default() },
        exe_nlink: 1,
        exe_name: OsString::new(),
        argc: argv.len() as u32,
        argv: argv.iter().map(OsString::from).collect::<Vec<_>>().into(),
        argv_truncated: false,
        argv_unreadable: false,
        kernel_flags: 0,
        stdio_sockets: 0,
    }
}

#[test]
fn lineage_follows_fork_and_exec() {
    let mut t = ProcessTable::new();
    t.on_exec(&exec(10, 1, "/usr/bin/python3", &["python3", "-m", "ipykernel_launcher"]));
    t.on_fork(&Fork { meta: meta(10), child_tgid: 11 });
    t.on_exec(&exec(11, 10, "/bin/sh", &["sh", "-c", "id"]));
    let parent = t.lineage(10).parent.unwrap();
    assert_eq!(parent.exe, Some("/usr/bin/python3".into()));
    assert_eq!(cmdline(&parent.argv), "python3 -m ipykernel_launcher");
    t.on_fork(&Fork { meta: meta(11), child_tgid: 12 });
    t.on_exec(&exec(12, 11, "/usr/bin/id", &["id"]));
    let l = t.lineage(11);
    assert_eq!(l.parent.unwrap().exe, Some("/bin/sh".into()));
    assert_eq!(l.ancestors, vec![Some("/usr/bin/python3".into())]);
    t.on_exit(&Exit { meta: meta(12), exit_code: 0 });
    assert!(t.get(12).is_none());
}

#[test]
fn parses_stat_with_hostile_comm() {
    let s = "1234 (a) b) (c) S 77 1234 1234 0 -1 4194560 0";
    assert_eq!(parse_stat(s), Some(("a) b) (c".to_string(), 77)));
}

#[test]
fn seeds_from_proc_and_sweeps() {
    let mut t = ProcessTable::new();
    t.seed_from_proc(std::path::Path::new("/proc"), &mut |_| (), &|_, _| None);
    let me = t.get(std::process::id()).expect("this test process is in /proc");
    assert_eq!(me.ppid, std::os::unix::process::parent_id());
    t.procs.insert(u32::MAX - 1, me.clone());
    assert!(t.sweep(std::path::Path::new("/proc")) >= 1);
    assert!(t.get(u32::MAX - 1).is_none());
}

#[test]
fn a_writer_that_exited_is_still_known_and_a_fork_copy_is_not_an_exec() {
    let mut t = ProcessTable::new();
    t.on_exec(&exec(10, 1, "/opt/conda/bin/python3", &["python3", "-m", "ipykernel_launcher"]));
    t.on_fork(&Fork { meta: meta(10), child_tgid: 11 });
    // Forked, its exec not seen yet: it still shows its parent's command line.
    assert!(!t.exec_seen(11));
    t.on_exec(&exec(11, 10, "/opt/conda/bin/python3", &["python3", "-m", "pip", "install", "x"]));
    assert!(t.exec_seen(11));
    t.on_exit(&Exit { meta: meta(11), exit_code: 0 });
    assert!(t.get(11).is_none());
    let chain = t.chain_with_exited(11, 8);
    assert_eq!(chain.iter().map(|p| p.pid).collect::<Vec<_>>(), [11, 10], "the exited pip, then its kernel");
    assert_eq!(cmdline(&chain[0].argv), "python3 -m pip install x");
    assert!(t.exec_seen(11));
    assert!(!t.exec_seen(99), "never seen");
}

#[test]
fn an_exiting_writer_keeps_what_its_exec_said() {
    // /proc of a process past exit_mm: stat still there, cmdline empty, no exe.
    let root = std::env::temp_dir().join(format!("guard-table-{}", std::process::id()));
    let dir = root.join("10");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stat"), "10 (python3) Z 1 10 10 0 -1").unwrap();
    std::fs::write(dir.join("cmdline"), "").unwrap();
    let mut t = ProcessTable::new();
    t.on_exec(&exec(10, 1, "/opt/conda/bin/python3", &["python3", "-m", "ipykernel_launcher"]));
    assert!(!t.refresh(&root, 10), "exiting counts as gone");
    assert_eq!(cmdline(&t.get(10).expect("still known").argv), "python3 -m ipykernel_launcher");
    assert!(t.exec_seen(10));
    std::fs::remove_dir_all(&root).unwrap();
}
