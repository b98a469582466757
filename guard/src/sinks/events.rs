//! `guard run --events`: every event as one JSON object per line (the raw sensor feed, before
//! detection). Field names follow Falco's where one exists.

use std::{
    ffi::OsString,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    process::table::{cmdline, Lineage},
    sensors::decode::Exec,
};

#[derive(Serialize)]
pub struct ExeIdentity {
    /// "major:minor" of the filesystem holding the loaded file.
    pub dev: String,
    pub ino: u64,
    pub nlink: u32,
    pub name: String,
}

#[derive(Serialize)]
pub struct ParentRecord {
    pub pid: u32,
    pub exe: Option<String>,
    pub cmdline: String,
}

#[derive(Serialize)]
pub struct ExecRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub pid: u32,
    /// The thread that called execve, when it was not the leader.
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub comm: String,
    pub filename: String,
    pub filename_truncated: bool,
    pub interp: Option<String>,
    pub exe: ExeIdentity,
    pub argc: u32,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub argv_unreadable: bool,
    /// Kernel verdict: the cgroup is enforced / the exec was killed.
    pub enforced: bool,
    pub killed: bool,
    pub stdio_sockets: u32,
    pub parent: Option<ParentRecord>,
    pub ancestors: Vec<Option<String>>,
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn lossy_os(s: &OsString) -> String {
    s.to_string_lossy().into_owned()
}

impl ExecRecord {
    pub fn new(e: &Exec, lineage: &Lineage, cgroup: Option<&PathBuf>, time: String) -> Self {
        Self {
            kind: "exec",
            time,
            pid: e.meta.tgid,
            tid: e.old_pid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            cgroup_id: e.meta.cgroup_id,
            cgroup: cgroup.map(|p| lossy(p)),
            comm: e.comm.clone(),
            filename: lossy(&e.filename),
            filename_truncated: e.filename_truncated,
            interp: e.interp.as_deref().map(lossy),
            exe: ExeIdentity {
                dev: format!("{}:{}", libc::major(e.exe.dev), libc::minor(e.exe.dev)),
                ino: e.exe.ino,
                nlink: e.exe_nlink,
                name: lossy_os(&e.exe_name),
            },
            argc: e.argc,
            argv: e.argv.iter().map(lossy_os).collect(),
            argv_truncated: e.argv_truncated,
            argv_unreadable: e.argv_unreadable,
            enforced: e.kernel_flags & guard_abi::exec_flags::ENFORCED != 0,
            killed: e.kernel_flags & guard_abi::exec_flags::KILLED != 0,
            stdio_sockets: e.stdio_sockets,
            parent: lineage.parent.as_ref().map(|p| ParentRecord {
                pid: p.pid,
                exe: p.exe.as_deref().map(lossy),
                cmdline: cmdline(&p.argv),
            }),
            ancestors: lineage.ancestors.iter().map(|a| a.as_deref().map(lossy)).collect(),
        }
    }
}

/// Reported whenever the kernel or the user-space queue dropped events since the last report.
#[derive(Serialize)]
pub struct LostRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    /// "kernel" (ring buffer full) or "queue" (user-space queue full).
    pub stage: &'static str,
    pub event: &'static str,
    pub count: u64,
}

/// JSON lines on any writer; one object per line, flushed in batches.
pub struct JsonLines<W: Write> {
    w: BufWriter<W>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> Self {
        Self { w: BufWriter::new(w) }
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        // serde_json escapes control characters, so a hostile argv cannot break the line.
        serde_json::to_writer(&mut self.w, record)?;
        self.w.write_all(b"\n")
    }

    /// A line as it is (the text format's exec lines).
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}
