//! Peers: the same loads with auditd and bpftrace logging them instead of the guard.

use super::*;

/// A tool logging execs and connects, running for one round.
pub(super) enum Peer {
    Guard(Guard),
    Auditd(Child),
    Bpftrace(Child),
}

/// bpftrace doing what the guard's monitor does at its simplest: log every exec with its
/// file name, and every connect.
pub(super) const BPFTRACE_SCRIPT: &str = r#"tracepoint:sched:sched_process_exec { printf("exec %d %s %s\n", pid, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d %s\n", pid, comm); }"#;

pub(super) fn start_peer(kind: &str, guard: &Path, dir: &Path) -> Result<Option<Peer>> {
    let log = |name: &str| fs::File::create(dir.join(name));
    Ok(match kind {
        "off" => None,
        "notebook-guard" => Some(Peer::Guard(start_guard(guard, dir, &[])?)),
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

pub(super) fn stop_peer(p: Option<Peer>) -> Result<()> {
    match p {
        None => {}
        Some(Peer::Guard(g)) => {
            g.stop()?;
        }
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
/// bpftrace, interleaved; each tool's ratio is the median over rounds of its run against that
/// round's run with nothing.
pub(super) fn peers(c: &mut Ctx) -> Result<()> {
    let tools = ["off", "notebook-guard", "auditd", "bpftrace"];
    let mut rows = Vec::new();
    let mut json = Map::new();
    for kind in ["exec", "connect"] {
        let steady =
            (kind == "connect").then(|| SteadyLoad::start("connect", CONNECT_CHUNK, Some(&c.nb))).transpose()?;
        let mut exec_rates: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
        let mut windows = vec![Vec::new(); tools.len()];
        for _ in 0..c.few_rounds(PEER_ROUNDS) {
            for (i, t) in tools.iter().enumerate() {
                let p = start_peer(t, c.guard, &c.dir)?;
                if p.is_some() {
                    c.warm_up()?;
                }
                match &steady {
                    Some(l) => windows[i].push(l.window(WINDOW)),
                    None => exec_rates[i].push(best_exec_storm(1500, Some(&c.nb))?),
                }
                stop_peer(p)?;
                std::thread::sleep(SETTLE);
            }
        }
        let rates = match steady {
            Some(l) => {
                let chunks = l.finish()?;
                let ns = windows.iter().map(|ws| chunks.fastest_in(ws)).collect::<Result<Vec<_>>>()?;
                ns.into_iter().map(|v| v.into_iter().map(|ns| 1e9 / ns).collect()).collect()
            }
            None => exec_rates,
        };
        let mut cells = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(x, base)| x / base).collect();
            let r = median(&ratios);
            cells.push(format!("{}, **{r:.3}**", spread(&rates[i], 0)));
            json.insert(format!("{kind} storm, {t}"), json!({"ops_per_s": stats(&rates[i]), "ratio": stats(&ratios)}));
            eprintln!("bench: {kind} storm, {t}: {:.0} ops/s ({r:.3})", median(&rates[i]));
        }
        rows.push(format!("| {kind} storm (notebook cgroup), ops/s | {} |", cells.join(" | ")));
    }
    c.results.insert("peers".into(), json.into());
    c.md.push(prose::render(
        prose::PEERS,
        &[
            ("rounds", c.few_rounds(PEER_ROUNDS).to_string()),
            ("best_of", BEST_OF.to_string()),
            ("window_s", WINDOW.as_secs_f64().to_string()),
            ("rows", rows.join("\n")),
        ],
    )?);
    Ok(())
}
