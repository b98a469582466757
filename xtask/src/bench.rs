//! `cargo xtask bench`: the guard's cost, measured against a baseline taken in the same run.
//!
//! Each scenario alternates rounds with the guard off and on (monitor mode, default policy, a
//! notebook cgroup present) and prints the on/off ratio with medians and spread. Load runs in
//! child processes of this binary (hidden `bench-load` subcommand) placed in the right cgroup.

use std::{
    fs,
    io::{BufRead, Read, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const ROUNDS: usize = 5;
/// The recorder's differences are tens of nanoseconds on a noisy VM: more rounds.
const RECORDER_ROUNDS: usize = 9;

fn cgroup2_mount() -> Result<PathBuf> {
    let m = fs::read_to_string("/proc/self/mountinfo")?;
    m.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .context("no cgroup2 mount")
}

/// Runs this binary's `bench-load KIND N` in `cgroup` (None: where we are) and returns what it
/// printed: one number.
fn load(kind: &str, n: u64, cgroup: Option<&Path>) -> Result<f64> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["bench-load", kind, &n.to_string()]).stdout(Stdio::piped());
    let procs = match cgroup {
        Some(cg) => Some(fs::OpenOptions::new().write(true).open(cg.join("cgroup.procs"))?),
        None => None,
    };
    if let Some(f) = &procs {
        let fd = f.as_raw_fd();
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("bench-load {kind} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The load itself, in the child: prints operations per second (or ns per op for null).
pub fn run_load(kind: &str, n: u64) -> Result<()> {
    let t = Instant::now();
    let value = match kind {
        // fork+exec of /bin/true from two threads (both cores).
        "exec" => {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..n / 2 {
                            let _ = Command::new("/bin/true").status();
                        }
                    });
                }
            });
            n as f64 / t.elapsed().as_secs_f64()
        }
        // loopback TCP connect + accept + close (RST close).
        "connect" => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            let srv = std::thread::spawn(move || {
                for _ in 0..n {
                    if let Ok((s, _)) = l.accept() {
                        drop(s);
                    }
                }
            });
            let t = Instant::now();
            for _ in 0..n {
                let s = TcpStream::connect(addr)?;
                // RST close (SO_LINGER 0), as the scenario asks; std's set_linger is unstable.
                let lg = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: valid fd and option struct.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&lg as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as u32,
                    )
                };
                drop(s);
            }
            let _ = srv.join();
            n as f64 / t.elapsed().as_secs_f64()
        }
        // getppid: the cost of a syscall (ns per call).
        "null" => {
            for _ in 0..n {
                // SAFETY: no arguments, no effects.
                unsafe { libc::getppid() };
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
        _ => bail!("unknown load {kind}"),
    };
    println!("{value}");
    Ok(())
}

struct Guard {
    child: Child,
    alerts: PathBuf,
    metrics: String,
}

fn start_guard(bin: &Path, dir: &Path, port: u16) -> Result<Guard> {
    let alerts = dir.join("alerts.json");
    let _ = fs::remove_file(&alerts);
    let mut child = Command::new(bin)
        .args(["run", "--no-pin", "--listen", &format!("127.0.0.1:{port}"), "--spool-dir"])
        .arg(dir.join("spool"))
        .arg("--output")
        .arg(format!("file:{}", alerts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        let l = lines.next().context("guard exited during start-up")??;
        if l.contains("guard running") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Guard { child, alerts, metrics: format!("127.0.0.1:{port}") })
}

impl Guard {
    fn stop(mut self) -> Result<()> {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }

    fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// utime + stime in seconds.
    fn cpu_s(&self) -> f64 {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / hz)
            })
            .unwrap_or(0.0)
    }

    fn metric(&self, name: &str) -> f64 {
        let Ok(mut s) = TcpStream::connect(&self.metrics) else { return f64::NAN };
        let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

/// A tool logging execs and connects, running for one round.
enum Peer {
    Guard(Guard),
    Auditd(Child),
    Bpftrace(Child),
}

/// bpftrace doing what the guard's monitor does at its simplest: log every exec with its
/// file name, and every connect.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:sched:sched_process_exec { printf("exec %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d %s\n", pid, comm); }"#;

fn start_peer(kind: &str, guard: &Path, dir: &Path, port: u16) -> Result<Option<Peer>> {
    let log = |name: &str| fs::File::create(dir.join(name));
    Ok(match kind {
        "off" => None,
        "notebook-guard" => Some(Peer::Guard(start_guard(guard, dir, port)?)),
        "auditd" => {
            // -f: foreground, records to stderr (here a file on disk, as its log would be).
            let child = Command::new("auditd").arg("-f").stdout(Stdio::null()).stderr(log("auditd.log")?).spawn()?;
            let t = Instant::now();
            loop {
                let s = Command::new("auditctl").arg("-s").output()?;
                let text = String::from_utf8_lossy(&s.stdout);
                if text.lines().any(|l| l.starts_with("pid ") && l != "pid 0") {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("auditd did not start");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let rule = ["-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-S", "connect", "-k", "nbg-bench"];
            let ok = Command::new("auditctl").args(rule).status()?;
            if !ok.success() {
                bail!("auditctl could not add the exec/connect rule");
            }
            Some(Peer::Auditd(child))
        }
        "bpftrace" => {
            let out = dir.join("bpftrace.log");
            let child = Command::new("bpftrace")
                .args(["-e", BPFTRACE_SCRIPT])
                .stdout(fs::File::create(&out)?)
                .stderr(Stdio::null())
                .spawn()?;
            let t = Instant::now();
            while !fs::read_to_string(&out).unwrap_or_default().contains("Attaching") {
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("bpftrace did not attach");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(Peer::Bpftrace(child))
        }
        _ => bail!("unknown peer {kind}"),
    })
}

fn stop_peer(p: Option<Peer>) -> Result<()> {
    match p {
        None => {}
        Some(Peer::Guard(g)) => g.stop()?,
        Some(Peer::Auditd(mut c)) => {
            let _ = Command::new("auditctl").arg("-D").status();
            // SAFETY: plain kill(2).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait()?;
        }
        Some(Peer::Bpftrace(mut c)) => {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            c.wait()?;
        }
    }
    Ok(())
}

/// Exec and connect storms in the notebook cgroup with nothing, notebook-guard, auditd and
/// bpftrace, rounds interleaved. Returns the table rows.
fn peers(
    guard: &Path,
    dir: &Path,
    port: u16,
    nb: &Path,
    results: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<String>> {
    let tools = ["off", "notebook-guard", "auditd", "bpftrace"];
    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();
    for (kind, n) in [("exec", 3000u64), ("connect", 40000)] {
        let mut v: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        for _ in 0..ROUNDS {
            for (i, t) in tools.iter().enumerate() {
                let p = start_peer(t, guard, dir, port)?;
                if p.is_some() {
                    load("exec", 20, Some(nb))?;
                    std::thread::sleep(Duration::from_millis(500));
                }
                v[i].push(load(kind, n, Some(nb))?);
                stop_peer(p)?;
            }
        }
        let base = median(&mut v[0].clone());
        let mut cells = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let m = median(&mut v[i].clone());
            let (lo, hi) = v[i].iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            cells.push(format!("{m:.0} ({lo:.0}–{hi:.0}), **{:.3}**", m / base));
            json.insert(
                format!("{kind} storm, {t}"),
                serde_json::json!({"ops_per_s": stats(&v[i]), "ratio": m / base}),
            );
            eprintln!("bench: {kind} storm, {t}: {m:.0} ops/s ({:.3})", m / base);
        }
        rows.push(format!("| {kind} storm (notebook cgroup), ops/s | {} |", cells.join(" | ")));
    }
    results.insert("peers".into(), json.into());
    Ok(rows)
}

/// Starts `guard ARGS…` and waits until it says its sys_enter program is attached.
fn start_helper(bin: &Path, args: &[&str]) -> Result<Child> {
    let mut child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        let l = lines.next().context("helper exited during start-up")??;
        if l.contains("recording") || l.contains("attached") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn stats(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    let m = median(&mut s);
    serde_json::json!({"median": m, "min": s.first(), "max": s.last(), "runs": v})
}

pub fn bench(root: &Path, guard: &Path) -> Result<()> {
    let mount = cgroup2_mount()?;
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    // A notebook: a TLJH-shaped unit cgroup the guard watches and attributes.
    let nb = mount.join("system.slice/jupyter-benchuser.service");
    fs::create_dir_all(&nb)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut results = serde_json::Map::new();
    let mut table = Vec::new();

    let scenarios: [(&str, &str, u64, Option<&Path>, bool); 4] = [
        ("exec storm (notebook cgroup)", "exec", 4000, Some(&nb), true),
        ("exec storm (outside notebooks)", "exec", 4000, None, true),
        ("connect storm (notebook cgroup)", "connect", 60000, Some(&nb), true),
        ("null syscall getppid (notebook cgroup)", "null", 20_000_000, Some(&nb), false),
    ];
    let mut footprint = serde_json::Map::new();
    for (name, kind, n, cg, higher_is_better) in scenarios {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let mut cpu = Vec::new();
        let mut rss = 0;
        let mut lost = 0.0;
        for _ in 0..ROUNDS {
            off.push(load(kind, n, cg)?);
            let g = start_guard(guard, &dir, port)?;
            // Steady state: the agent's one-time work for a notebook it meets for the first time
            // (its root's interpreter identities and system-binary index) is not what we measure.
            load("exec", 20, cg)?;
            std::thread::sleep(Duration::from_millis(1000));
            let c0 = g.cpu_s();
            let t = Instant::now();
            on.push(load(kind, n, cg)?);
            let wall = t.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(1200));
            cpu.push((g.cpu_s() - c0) / wall);
            rss = rss.max(g.rss_kib());
            lost += g.metric("guard_events_lost_total");
            g.stop()?;
        }
        let ratio = if higher_is_better {
            median(&mut on.clone()) / median(&mut off.clone())
        } else {
            median(&mut off.clone()) / median(&mut on.clone())
        };
        let unit = if kind == "null" { "ns/call" } else { "ops/s" };
        let spread = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            format!("{:.0} {unit} ({lo:.0}–{hi:.0})", median(&mut v.to_vec()))
        };
        table.push(format!(
            "| {name} | {} | {} | **{ratio:.3}** | {:.1}% | {} MiB | {} |",
            spread(&off),
            spread(&on),
            100.0 * median(&mut cpu.clone()),
            rss / 1024,
            if lost.is_nan() { "?".to_string() } else { format!("{lost}") }
        ));
        results.insert(
            name.into(),
            serde_json::json!({"unit": unit, "off": stats(&off), "on": stats(&on), "ratio": ratio, "agent_cpu_share": stats(&cpu), "agent_rss_kib": rss, "events_lost": lost}),
        );
        eprintln!("bench: {name}: ratio {ratio:.3}");
    }

    // The seccomp recorder: getppid with nothing on sys_enter, with an empty sys_enter program
    // (the floor any recorder pays), and with the recorder recording another cgroup and this
    // one. Rounds interleave the four so drift in the machine hits them alike.
    let here = mount.join("bench-recorded-here");
    let other = mount.join("bench-recorded-other");
    fs::create_dir_all(&here)?;
    fs::create_dir_all(&other)?;
    let rel = |p: &Path| Path::new("/").join(p.strip_prefix(&mount).unwrap_or(p)).display().to_string();
    let rec_out = dir.join("recording.json").display().to_string();
    let rel_other = rel(&other);
    let rel_here = rel(&here);
    let configs: [(&str, Option<Vec<&str>>); 4] = [
        ("nothing on sys_enter", None),
        ("empty sys_enter program (floor)", Some(vec!["seccomp", "floor"])),
        (
            "recorder, another cgroup recorded",
            Some(vec!["seccomp", "record", "--cgroup", &rel_other, "--duration", "3600", "-o", &rec_out]),
        ),
        (
            "recorder, this cgroup recorded",
            Some(vec!["seccomp", "record", "--cgroup", &rel_here, "--duration", "3600", "-o", &rec_out]),
        ),
    ];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..RECORDER_ROUNDS {
        for (i, (_, args)) in configs.iter().enumerate() {
            let helper = match args {
                Some(a) => Some(start_helper(guard, a)?),
                None => None,
            };
            ns[i].push(load("null", 10_000_000, Some(&here))?);
            if let Some(mut h) = helper {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(h.id() as i32, libc::SIGINT) };
                h.wait()?;
            }
        }
    }
    let base = median(&mut ns[0].clone());
    let floor = median(&mut ns[1].clone()) - base;
    let mut rec_rows = Vec::new();
    let mut rec_json = serde_json::Map::new();
    for (i, (name, _)) in configs.iter().enumerate() {
        let m = median(&mut ns[i].clone());
        let added = m - base;
        let (lo, hi) = ns[i].iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        let vs_floor = if i >= 2 && floor > 0.0 { format!("**{:.2}**", added / floor) } else { "".into() };
        rec_rows.push(format!("| {name} | {m:.0} ns ({lo:.0}–{hi:.0}) | {added:+.0} ns | {vs_floor} |"));
        rec_json.insert(
            (*name).into(),
            serde_json::json!({"ns_per_call": stats(&ns[i]), "added_ns": added, "vs_floor": if i >= 2 && floor > 0.0 { Some(added / floor) } else { None }}),
        );
        eprintln!("bench: getppid, {name}: {m:.0} ns/call ({added:+.0})");
    }
    results.insert("seccomp recorder (getppid)".into(), rec_json.into());
    let _ = fs::remove_dir(&here);
    let _ = fs::remove_dir(&other);

    let peer_rows = peers(guard, &dir, port, &nb, &mut results)?;

    // Exec-to-alert latency on the file sink: spawn `curl --version` in the notebook (a
    // network tool: one alert) and time until its alert line is in the file.
    let g = start_guard(guard, &dir, port)?;
    let idle_rss = g.rss_kib();
    footprint.insert("idle_rss_kib".into(), idle_rss.into());
    let mut lat = Vec::new();
    let procs = fs::OpenOptions::new().write(true).open(nb.join("cgroup.procs"))?;
    // The first few warm the agent up (see above) and are not counted.
    let mut offset = 0u64;
    for i in 0..105 {
        let marker = format!("bench-latency-{i}");
        let fd = procs.as_raw_fd();
        let t = Instant::now();
        let mut cmd = Command::new("/usr/bin/curl");
        cmd.args(["--version", "-H", &marker]).stdout(Stdio::null());
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        // Read only what was appended since the last sample: re-reading the whole file every
        // 200 µs would compete with the agent for the CPU and inflate what we measure.
        let mut seen = String::new();
        loop {
            let grown = fs::File::open(&g.alerts).and_then(|mut f| {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(offset))?;
                let mut buf = String::new();
                f.read_to_string(&mut buf)?;
                Ok(buf)
            });
            if let Ok(buf) = grown {
                offset += buf.len() as u64;
                seen.push_str(&buf);
            }
            if seen.contains(&marker) {
                if i >= 5 {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                bail!("no alert for {marker} within 5 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.wait()?;
    }
    g.stop()?;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    let (p50, p99) = (p(0.5), p(0.99));
    results.insert(
        "exec-to-alert latency (file sink)".into(),
        serde_json::json!({"p50_ms": p50, "p99_ms": p99, "samples": lat.len()}),
    );
    results.insert("footprint".into(), footprint.into());
    let _ = fs::remove_dir(&nb);

    let machine = serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
    });
    results.insert("machine".into(), machine.clone());
    fs::write(dir.join("results.json"), serde_json::to_string_pretty(&serde_json::Value::Object(results))?)?;

    let md = format!(
        "# Benchmarks\n\nMeasured by `cargo xtask bench` on {} CPUs ({}), kernel {}. Each scenario alternates {ROUNDS} rounds with the guard off and on (monitor mode, default policy, a TLJH-shaped notebook cgroup present); the ratio is on/off of the medians (for the null syscall, off/on of ns per call), so 1.0 means no measurable cost. Machine-readable results: `target/bench/results.json`.\n\n| scenario | guard off, median (min–max) | guard on, median (min–max) | ratio | agent CPU | agent RSS | events lost |\n|---|---|---|---|---|---|---|\n{}\n\nExec-to-alert (spawn of `curl` in the notebook to its alert in the file sink, 100 samples): p50 {p50:.2} ms, p99 {p99:.2} ms. Agent RSS idle: {} MiB.\n\nThe seccomp recorder, attached to `sys_enter` only while a recording runs (getppid loop, ns per call; \"vs floor\" is the recorder's added cost over the empty program's):\n\n| sys_enter | getppid, median (min–max) | added | vs floor |\n|---|---|---|---|\n{}\n\nPeers in the same run (notebook cgroup, rounds interleaved; ratio to nothing running): auditd with an `execve` + `connect` rule, and bpftrace logging every exec (`sched_process_exec`) and connect (`sys_enter_connect`).\n\n| scenario | nothing | notebook-guard | auditd | bpftrace |\n|---|---|---|---|---|\n{}\n\nWhere the min–max ranges of the two sides overlap, the difference is within this machine's noise.\n",
        machine["cpus"], machine["cpu"].as_str().unwrap_or(""), machine["kernel"].as_str().unwrap_or(""),
        table.join("\n"),
        idle_rss / 1024,
        rec_rows.join("\n"),
        peer_rows.join("\n")
    );
    fs::write(root.join("BENCHMARKS.md"), md)?;
    eprintln!("bench: wrote BENCHMARKS.md and target/bench/results.json");
    Ok(())
}
