//! A stand-in for systemd running one TLJH / SystemdSpawner unit, so that tests start notebook
//! servers the way the spawner does: the server is this supervisor's child, made inside the
//! unit's cgroup (never a test process that joins the cgroup from outside, which is what
//! `kubectl exec` looks like), as the notebook's own uid, optionally in a network namespace.
//!
//! `unitd CGROUP_DIR UID GID NETNS|- LOG -- ARGV…`
//!
//! It creates the cgroup, starts ARGV in it and prints `incarnation N ID` (the cgroup's id) on
//! stdout. SIGHUP restarts the unit as `systemctl restart` does: every process in the cgroup is
//! killed, the cgroup removed and made again at once (SIGUSR1: 1.2 s later), and ARGV started
//! in the new one. SIGTERM stops it, removes the cgroup and exits.

use std::{
    ffi::CString,
    fs,
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::{
        signal::{SigSet, Signal},
        wait::{waitpid, WaitPidFlag},
    },
    unistd::{fork, ForkResult, Pid},
};

struct Unit {
    cgroup: PathBuf,
    uid: u32,
    gid: u32,
    netns: Option<PathBuf>,
    log: PathBuf,
    argv: Vec<CString>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sep = args.iter().position(|a| a == "--").context("usage: unitd CGROUP UID GID NETNS|- LOG -- ARGV…")?;
    if sep != 6 || args.len() < 8 {
        bail!("usage: unitd CGROUP UID GID NETNS|- LOG -- ARGV…");
    }
    let unit = Unit {
        cgroup: PathBuf::from(&args[1]),
        uid: args[2].parse().context("UID")?,
        gid: args[3].parse().context("GID")?,
        netns: (args[4] != "-").then(|| Path::new("/run/netns").join(&args[4])),
        log: PathBuf::from(&args[5]),
        argv: args[7..].iter().map(|a| CString::new(a.as_bytes())).collect::<Result<_, _>>()?,
    };
    let signals = SigSet::from_iter([Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT]);
    signals.thread_block()?;
    let mut n = 0;
    let mut child = unit.start(n)?;
    loop {
        let sig = signals.wait()?;
        unit.stop(child)?;
        match sig {
            Signal::SIGHUP | Signal::SIGUSR1 => {
                if sig == Signal::SIGUSR1 {
                    std::thread::sleep(Duration::from_millis(1200));
                }
                n += 1;
                child = unit.start(n)?;
            }
            _ => return Ok(()),
        }
    }
}

impl Unit {
    fn start(&self, n: u32) -> Result<Pid> {
        fs::create_dir_all(&self.cgroup).with_context(|| format!("creating {}", self.cgroup.display()))?;
        let id = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&self.cgroup)?.ino()
        };
        let procs = fs::OpenOptions::new().write(true).open(self.cgroup.join("cgroup.procs"))?;
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let netns = self.netns.as_ref().map(fs::File::open).transpose().context("opening the network namespace")?;
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // A unit's own environment: the defaults, then `UNIT_ENV_<NAME>=value` from ours.
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("NBG_INCARNATION".into(), n.to_string()),
        ];
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix("UNIT_ENV_") {
                vars.retain(|(n, _)| n != name);
                vars.push((name.to_string(), v));
            }
        }
        let env: Vec<CString> =
            vars.into_iter().map(|(k, v)| CString::new(format!("{k}={v}"))).collect::<Result<_, _>>()?;
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: between fork and exec the child makes only async-signal-safe system calls.
        match unsafe { fork() }? {
            ForkResult::Child => unsafe {
                let empty = SigSet::empty();
                let _ = empty.thread_set_mask();
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(120);
                }
                if let Some(ns) = &netns {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        libc::_exit(121);
                    }
                }
                libc::dup2(log.as_raw_fd(), 1);
                libc::dup2(log.as_raw_fd(), 2);
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    libc::_exit(122);
                }
                libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
                libc::_exit(127)
            },
            ForkResult::Parent { child } => {
                println!("incarnation {n} {id}");
                std::io::stdout().flush()?;
                Ok(child)
            }
        }
    }

    /// Kills everything in the unit's cgroup, reaps its main process and removes the cgroup.
    fn stop(&self, main: Pid) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = fs::read_to_string(self.cgroup.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            for pid in &pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            let _ = waitpid(main, Some(WaitPidFlag::WNOHANG));
            if pids.is_empty() && fs::remove_dir(&self.cgroup).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the unit's cgroup {} did not empty", self.cgroup.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
