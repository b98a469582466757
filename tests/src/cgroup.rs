//! Test cgroups, and processes started inside them the way a spawner starts them.

use crate::*;

/// A cgroup v2 directory made for one test, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup2 root, as the agent reports it.
    pub rel: PathBuf,
    pub id: u64,
    procs: OwnedFd,
}

impl TestCgroup {
    pub fn new(name: &str) -> Result<Self> {
        Self::new_under(Path::new(""), name)
    }

    /// A cgroup at `parent/name` below the cgroup2 root (`parent` is created too).
    pub fn new_under(parent: &Path, name: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::exact(parent, &format!("{name}-{}-{n}", std::process::id()))
    }

    /// A TLJH-shaped unit cgroup, `system.slice/jupyter-<user>.service`, for a fresh user name.
    pub fn tljh() -> Result<(Self, String)> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let user = format!("nbtest{}x{n}", std::process::id());
        Ok((Self::exact(Path::new("system.slice"), &format!("jupyter-{user}.service"))?, user))
    }

    pub fn exact(parent: &Path, name: &str) -> Result<Self> {
        sweep_leftovers();
        let mount = find_cgroup2_mount()?;
        let rel = Path::new("/").join(parent).join(name);
        let path = mount.join(rel.strip_prefix("/").unwrap());
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let id = cgroup_id(&path)?;
        let procs = fs::OpenOptions::new().write(true).open(path.join("cgroup.procs"))?.into();
        Ok(Self { path, rel, id, procs })
    }

    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes a failed test left behind would keep the cgroup busy.
        if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Children first (a test may nest cgroups), then this one.
        let _ = remove_tree(&self.path);
    }
}

/// How a child process starts its new image.
pub enum Exec<'a> {
    /// execve(path, argv)
    Path(&'a Path),
    /// execveat(fd, "", argv, envp, AT_EMPTY_PATH): fileless exec of an open file.
    Fd(RawFd),
}

pub(crate) fn cstrings<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(items: I) -> Result<Vec<CString>> {
    items.into_iter().map(|s| Ok(CString::new(s.as_ref().as_bytes())?)).collect()
}

/// Forks a child that moves itself into `cgroup` and then execs. Only async-signal-safe calls
/// happen between fork and exec: everything is prepared before the fork.
pub fn spawn_in(cgroup: &TestCgroup, exec: Exec<'_>, argv: &[&OsStr]) -> Result<Pid> {
    let argv_c = cstrings(argv.iter())?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let env_c = cstrings(["PATH=/usr/bin:/bin", "LANG=C"])?;
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let path_c = match exec {
        Exec::Path(p) => Some(CString::new(p.as_os_str().as_bytes())?),
        Exec::Fd(_) => None,
    };
    let empty = CString::new("")?;
    let procs = cgroup.procs_fd();
    // Silence the child: tests read events, not output.
    let devnull = fs::OpenOptions::new().write(true).open("/dev/null")?;
    let devnull_fd = devnull.as_raw_fd();

    // SAFETY: the child only calls async-signal-safe functions (write, dup2, execve, _exit).
    match unsafe { fork() }? {
        ForkResult::Child => unsafe {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(126);
            }
            libc::dup2(devnull_fd, 1);
            libc::dup2(devnull_fd, 2);
            match (&exec, &path_c) {
                (Exec::Path(_), Some(p)) => {
                    libc::execve(p.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
                }
                (Exec::Fd(fd), _) => {
                    libc::syscall(
                        libc::SYS_execveat,
                        *fd,
                        empty.as_ptr(),
                        argv_p.as_ptr(),
                        env_p.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    );
                }
                _ => {}
            }
            libc::_exit(127)
        },
        ForkResult::Parent { child } => Ok(child),
    }
}
