//! The loads the benchmark measures, run in child processes of this binary (the hidden
//! `bench-load KIND N RATE` subcommand) placed in the cgroup a scenario asks for.
//!
//! Two shapes. Exec storms are finite runs that print their rate: what the guard costs them
//! includes the agent's work on the other core, which only a whole run shows. Steady loads
//! (`connect`, `null`) pay only what the guard's programs add to each operation, a few per
//! cent at most, while this VM's speed jumps between levels 10–20% apart within seconds. So
//! they run for the whole scenario, timing every chunk of a millisecond or so, and the
//! benchmark compares windows of time seconds apart within the one process ([`SteadyLoad`]).

mod file_ops;
mod steady;

pub use steady::SteadyLoad;

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Runs `cmd` with its first action (before exec) being to join `cgroup`.
pub fn in_cgroup(cmd: &mut Command, cgroup: &Path) -> Result<fs::File> {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}", cgroup.display()))?;
    let fd = procs.as_raw_fd();
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(procs)
}

fn load_command(kind: &str, n: u64, rate: u64) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench-load", kind, &n.to_string(), &rate.to_string()]);
    Ok(cmd)
}

/// Runs a finite load (`exec`, `exec-max`) in `cgroup` (None: where we are) and returns the
/// rate it printed.
pub fn load(kind: &str, n: u64, rate: u64, cgroup: Option<&Path>) -> Result<f64> {
    let mut cmd = load_command(kind, n, rate)?;
    cmd.stdout(Stdio::piped());
    let _procs = cgroup.map(|cg| in_cgroup(&mut cmd, cg)).transpose()?;
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("bench-load {kind} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().with_context(|| format!("bench-load {kind} printed {text:?}"))
}

/// CLOCK_MONOTONIC in ns: the one clock this process and its loads share.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// fork+exec of /bin/true from `threads` threads, `n` in all, paced to `rate` per second
/// (0: as fast as they go). Returns execs per second.
fn exec_storm(n: u64, threads: u64, rate: u64) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mine = n / threads;
                for i in 0..mine {
                    if rate > 0 {
                        let due = Duration::from_secs_f64(i as f64 * threads as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(t.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = Command::new("/bin/true").status();
                }
            });
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

/// The CPUs the calling thread may use, in order.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; the call gets a valid pointer and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
        if cpus.is_empty() {
            bail!("no CPU allowed");
        }
        Ok(cpus)
    }
}

/// Pins the calling thread (and what it forks from now on) to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins the calling thread to the last CPU it may use, so a migration between cores (cold
/// caches, another core's clock) is not among what differs between windows.
fn pin_to_one_cpu() -> Result<()> {
    pin_to(*allowed_cpus()?.last().context("no CPU allowed")?)
}

/// Set when the parent closes our stdin: the steady load's end.
fn stop_on_stdin_close() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// `op` in timed chunks of `chunk` until `stop`.
fn chunks_until(stop: &AtomicBool, chunk: u64, mut op: impl FnMut() -> Result<()>) -> Result<Vec<(u64, u64)>> {
    let mut spans = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        let a = monotonic_ns();
        for _ in 0..chunk {
            op()?;
        }
        spans.push((a, monotonic_ns()));
    }
    Ok(spans)
}

/// Files the reference work opens, reads and closes (about 0.5 ms here, against 40 ms for a
/// chunk of execs).
const REFERENCE_OPENS: usize = 100;
/// The file it opens: the one the storm execs, whose path lookup an exec also makes.
const REFERENCE_FILE: &str = "/bin/true";
/// The reference work's size, as BENCHMARKS.md describes it.
pub fn reference_size() -> String {
    format!("{REFERENCE_OPENS} × open, read, fstat and close of `{REFERENCE_FILE}`")
}

/// Work timed after each exec chunk to read the VM's speed at that moment: path lookups and
/// file opens, the kernel work an exec begins with. This VM's speed for kernel work jumps
/// 10-20% between seconds, and each of its CPUs on its own. Without a guard, 2 s windows of the
/// pinned storm 2-6 s apart differ by 7-8% (sd) in median exec time; by 3.5-4% in each
/// thread's median exec time over its median of this work (4% with page faults on
/// MADV_DONTNEED'ed pages, the reference before this one). The guard has no program on this
/// path: no syscall it watches, and root opening a world-readable file checks no capability
/// (the guard's cap_capable program would see one).
struct Reference {
    path: std::ffi::CString,
}

impl Reference {
    fn new() -> Result<Self> {
        Ok(Self { path: std::ffi::CString::new(REFERENCE_FILE)? })
    }

    /// Runs the reference work once; returns its ns.
    fn time(&self) -> Result<u64> {
        let mut buf = [0u8; 512];
        let a = monotonic_ns();
        for _ in 0..REFERENCE_OPENS {
            // SAFETY: a NUL-terminated path, a buffer of the length given, a stat struct to
            // fill, and the fd closed right after.
            unsafe {
                let fd = libc::open(self.path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    bail!("opening {REFERENCE_FILE} for the reference work: {}", std::io::Error::last_os_error());
                }
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &mut st);
                libc::close(fd);
            }
        }
        Ok(monotonic_ns() - a)
    }
}

/// A steady load, in the child: `op` in chunks of `chunk` on one CPU until stdin closes, then
/// one line per chunk with its start and end.
fn run_steady(chunk: u64, op: impl FnMut() -> Result<()>) -> Result<()> {
    let stop = stop_on_stdin_close();
    pin_to_one_cpu()?;
    print_spans(chunks_until(&stop, chunk, op)?);
    Ok(())
}

/// The steady exec storm, in the child: fork+exec of /bin/true from two threads (both cores,
/// as in the finite storm), each pinned to its own CPU with its children (which inherit the
/// pinning), each timing its own chunks and, after each, the [`Reference`] work, until stdin
/// closes. Pinned, a thread's reference work reads the speed of the CPU its execs ran on:
/// this VM's two CPUs change speed apart from each other, and unpinned execs migrate between
/// them.
fn exec_steady(chunk: u64) -> Result<()> {
    let stop = stop_on_stdin_close();
    let cpus = allowed_cpus()?;
    let spans = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2usize)
            .map(|t| {
                let (stop, cpu) = (&stop, cpus[t % cpus.len()]);
                s.spawn(move || -> Result<Vec<(u64, u64, u64)>> {
                    pin_to(cpu)?;
                    let reference = Reference::new()?;
                    let mut spans = Vec::with_capacity(1 << 14);
                    while !stop.load(Ordering::Relaxed) {
                        let a = monotonic_ns();
                        for _ in 0..chunk {
                            Command::new("/bin/true").status()?;
                        }
                        let b = monotonic_ns();
                        spans.push((a, b, reference.time()?));
                    }
                    Ok(spans)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("an exec thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let mut out = String::new();
    for (t, mine) in spans.into_iter().enumerate() {
        for (a, b, r) in mine {
            out.push_str(&format!("{a} {b} {r} {t}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

fn print_spans(spans: Vec<(u64, u64)>) {
    let mut out = String::with_capacity(spans.len() * 40);
    for (a, b) in spans {
        out.push_str(&format!("{a} {b}\n"));
    }
    print!("{out}");
}

/// Loopback TCP connect + accept + close (RST close), in lock step: each connection is
/// accepted before the next is made, so the listen queue never overflows (an overflow costs a
/// 1 s SYN retransmit and made rates swing 6k-27k/s between identical runs).
fn connect_loop(chunk: u64) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    run_steady(chunk, || {
        let c = TcpStream::connect(addr)?;
        let (s, _) = l.accept()?;
        // RST close (SO_LINGER 0), as the scenario asks; std's set_linger is unstable.
        let lg = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: valid fd and option struct.
        unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&lg as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        drop(c);
        drop(s);
        Ok(())
    })
}

/// Loopback UDP datagrams on a connected pair: each one received passes every cgroup skb
/// ingress program on the node (`dns_ingress` among them), and no socket-address hook.
fn udp_loop(chunk: u64) -> Result<()> {
    let (a, b) = (std::net::UdpSocket::bind("127.0.0.1:0")?, std::net::UdpSocket::bind("127.0.0.1:0")?);
    a.connect(b.local_addr()?)?;
    let (out, mut back) = ([7u8; 64], [0u8; 128]);
    run_steady(chunk, || {
        a.send(&out)?;
        b.recv(&mut back)?;
        Ok(())
    })
}

/// The load itself, in the child (`bench-load KIND N RATE`).
pub fn run_load(kind: &str, n: u64, rate: u64) -> Result<()> {
    match kind {
        // Both cores: two threads, each waiting for its child.
        "exec" => println!("{}", exec_storm(n, 2, rate)),
        // More runnable work than cores: the highest exec rate this machine produces.
        "exec-max" => println!("{}", exec_storm(n, 4, rate)),
        // The exec storm as a steady load: chunks of n per thread.
        "exec-steady" => exec_steady(n)?,
        "connect" => connect_loop(n)?,
        "udp" => udp_loop(n)?,
        // getppid: the cost of a syscall.
        "null" => run_steady(n, || {
            // SAFETY: no arguments, no effects.
            unsafe { libc::getppid() };
            Ok(())
        })?,
        k if file_ops::is(k) => file_ops::run(k, n)?,
        _ => bail!("unknown load {kind}"),
    }
    Ok(())
}
