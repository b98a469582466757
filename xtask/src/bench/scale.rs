//! Many notebooks on one node: the agent's start-up with a thousand already running, whether
//! each is told apart, and whether an exec costs more when there are more of them.

use super::*;

/// Notebooks made for a section: TLJH-shaped units (`system.slice/jupyter-USER.service`),
/// each with a process of its own, as a node with that many running servers has them.
/// Stopped and removed when dropped.
pub(super) struct Notebooks {
    pub(super) cgroups: Vec<PathBuf>,
    pub(super) users: Vec<String>,
    children: Vec<Child>,
}

impl Notebooks {
    pub(super) fn start(mount: &Path, n: usize) -> Result<Self> {
        let mut nbs = Notebooks { cgroups: Vec::new(), users: Vec::new(), children: Vec::new() };
        for i in 0..n {
            let user = format!("scale{i:04}");
            let cg = mount.join(format!("system.slice/jupyter-{user}.service"));
            fs::create_dir_all(&cg).with_context(|| format!("making {}", cg.display()))?;
            nbs.cgroups.push(cg.clone());
            nbs.users.push(user);
            let mut cmd = Command::new("/bin/sleep");
            cmd.arg("3600").stdin(Stdio::null()).stdout(Stdio::null());
            let _procs = in_cgroup(&mut cmd, &cg)?;
            nbs.children.push(cmd.spawn().context("starting a notebook's process")?);
        }
        Ok(nbs)
    }
}

impl Drop for Notebooks {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for cg in &self.cgroups {
            let _ = fs::remove_dir(cg);
        }
    }
}

/// Execs per accounting run and runs per population.
const SCALE_EXECS: u64 = 1500;
const SCALE_RUNS: usize = 3;
/// How long the agent's CPU is read with no events, before the storms.
const IDLE: Duration = Duration::from_secs(3);

/// With 10 and then 1000 notebooks running before the agent starts: its time to ready, its
/// memory, every notebook's exec attributed to its own user (1000 case), and the agent's and
/// programs' cost per exec of a storm in one of them.
pub(super) fn scale(c: &mut Ctx) -> Result<()> {
    let mut rows = Vec::new();
    let mut out = Map::new();
    for n in [10usize, 1000] {
        let nbs = Notebooks::start(&c.mount, n)?;
        let g = start_guard(c.guard, &c.dir, &[])?;
        let ready = g.ready;
        c.warm_up()?;
        let attributed = if n == 1000 { Some(attribution(&g, &nbs)?) } else { None };
        // What the agent does with no events (the 250 ms scan of the node's cgroups, which
        // lists every unit), so that the storm's per-exec figure can be had without it.
        std::thread::sleep(Duration::from_secs(1));
        let (c0, t0) = (g.cpu_s(), Instant::now());
        std::thread::sleep(IDLE);
        let background = (g.cpu_s() - c0) / t0.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut cost = accounting::exec_storm(&g, SCALE_EXECS, SCALE_RUNS, Some(&c.nb), EXEC_TAIL)?;
        let execs = (SCALE_EXECS * SCALE_RUNS as u64) as f64;
        let net =
            cost["agent_us_per_op"].as_f64().unwrap_or(f64::NAN) - background * t.elapsed().as_secs_f64() / execs * 1e6;
        cost["agent_us_per_op_net"] = json!(net);
        cost["agent_background_share"] = json!(background);
        let peak = g.peak_rss_kib();
        g.stop()?;
        drop(nbs);
        let f = |k: &str| cost[k].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "bench: {n} notebooks: ready in {} ms, agent idle {:.2}% of a core, {:.2} µs/exec ({:.2} beyond idle), programs {:.2} µs/exec",
            ready.as_millis(),
            100.0 * background,
            f("agent_us_per_op"),
            f("agent_us_per_op_net"),
            f("programs_us_per_op")
        );
        let (right, total) = attributed.unwrap_or((0, 0));
        rows.push(format!(
            "| {n} | {:.2} s | {} | {:.2}% | {:.3} µs | {:.3} µs | {:.3} µs | {:.2} | {} MiB |",
            ready.as_secs_f64(),
            if total == 0 { "—".to_string() } else { format!("{right} of {total}") },
            100.0 * background,
            f("agent_us_per_op"),
            f("agent_us_per_op_net"),
            f("programs_us_per_op"),
            f("program_runs_per_op"),
            peak / 1024,
        ));
        out.insert(
            n.to_string(),
            json!({"ready_s": ready.as_secs_f64(), "attributed": right, "execs_checked": total,
                   "per_exec": cost, "agent_peak_rss_kib": peak}),
        );
    }
    let growth = |k: &str| {
        let v = |n: &str| out[n]["per_exec"][k].as_f64().unwrap_or(f64::NAN);
        v("1000") / v("10")
    };
    let (agent_growth, agent_growth_all, programs_growth) =
        (growth("agent_us_per_op_net"), growth("agent_us_per_op"), growth("programs_us_per_op"));
    out.insert("agent_per_exec_1000_over_10".into(), json!(agent_growth));
    out.insert("agent_per_exec_with_background_1000_over_10".into(), json!(agent_growth_all));
    out.insert("programs_per_exec_1000_over_10".into(), json!(programs_growth));
    c.results.insert("scale".into(), Value::Object(out));
    c.md.push(prose::render(
        prose::SCALE,
        &[
            ("execs", (SCALE_EXECS * SCALE_RUNS as u64).to_string()),
            ("rows", rows.join("\n")),
            ("agent_growth", format!("{agent_growth:.2}")),
            ("agent_growth_all", format!("{agent_growth_all:.2}")),
            ("idle_seconds", IDLE.as_secs().to_string()),
            ("programs_growth", format!("{programs_growth:.2}")),
        ],
    )?);
    Ok(())
}

/// Runs `curl --version` (a network tool: one `notebook.network_tool` alert each) in every notebook and counts the alerts that name
/// the notebook's own user: (right, execs).
fn attribution(g: &Guard, nbs: &Notebooks) -> Result<(usize, usize)> {
    let mut expected = std::collections::HashMap::new();
    for (cg, user) in nbs.cgroups.iter().zip(&nbs.users) {
        let mut cmd = Command::new("/usr/bin/curl");
        cmd.arg("--version").stdout(Stdio::null());
        let _procs = in_cgroup(&mut cmd, cg)?;
        let mut child = cmd.spawn()?;
        expected.insert(child.id(), user.clone());
        child.wait()?;
    }
    let t = Instant::now();
    loop {
        let alerts = g.alerts_so_far();
        let named: Vec<(u64, String)> = alerts
            .iter()
            .filter(|a| a["rule"] == "notebook.network_tool" && a["output_fields"]["proc.exepath"] == "/usr/bin/curl")
            .filter_map(|a| {
                let f = &a["output_fields"];
                Some((f["proc.pid"].as_u64()?, f["jupyterhub.user"].as_str()?.to_string()))
            })
            .collect();
        if named.len() >= expected.len() || t.elapsed() > Duration::from_secs(20) {
            let right = named.iter().filter(|(pid, user)| expected.get(&(*pid as u32)) == Some(user)).count();
            return Ok((right, expected.len()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
