//! Overhead: exec, connect and null-syscall storms with the guard off and on, by timing and
//! by CPU accounting.

use super::*;

/// Runs of an exec storm per half-round; the half counts its best (noise in a VM only slows).
pub(super) const BEST_OF: usize = 3;
/// How long a steady load runs in each configuration of a round.
pub(super) const WINDOW: Duration = Duration::from_millis(1000);
/// After a tool stops and before the next window: its programs detach and are freed.
pub(super) const SETTLE: Duration = Duration::from_millis(200);
/// Operations per timed chunk of the steady loads: 1–3 ms each here.
pub(super) const NULL_CHUNK: u64 = 10_000;
pub(super) const CONNECT_CHUNK: u64 = 100;

/// Between a guard's start or stop and an exec storm. Starting and stopping an agent leaves
/// the kernel work to finish (programs JITed and attached, a ring and maps allocated, then all
/// of it freed) that slows a storm right after it: with 0.5 s after start and 0.2 s after stop,
/// rounds that ran the guard-off half first came out 2-4% below those that ran it second, even
/// outside notebooks, where the guard takes 0.2% of the CPU.
pub(super) const EXEC_SETTLE: Duration = Duration::from_secs(2);
/// Execs per timed chunk of the steady exec storm, per thread (about 40 ms here).
pub(super) const EXEC_CHUNK: u64 = 50;
/// How long each half of an exec round runs.
pub(super) const EXEC_WINDOW: Duration = Duration::from_secs(2);

/// After an exec storm, the agent's CPU is still counted this long: what the storm queued is
/// part of its cost (while records flow the agent drains at most 100 ms apart, so this is
/// ample), while the round's other half should follow soon, since this VM's speed drifts over
/// seconds.
pub(super) const EXEC_TAIL: Duration = Duration::from_millis(500);

/// The best of BEST_OF exec storms: the highest rate.
pub(super) fn best_exec_storm(n: u64, cgroup: Option<&Path>) -> Result<f64> {
    let runs = (0..BEST_OF).map(|_| load("exec", n, 0, cgroup)).collect::<Result<Vec<f64>>>()?;
    Ok(min_max(&runs).1)
}

/// One overhead scenario, round by round.
#[derive(Default)]
pub(super) struct Overhead {
    /// What each half measured, in the scenario's unit.
    off: Vec<f64>,
    on: Vec<f64>,
    /// Guard-on over guard-off performance (1.0: no cost).
    pub(super) ratios: Vec<f64>,
    /// Steady loads: the same ratio over every chunk of the windows, noise and all.
    all_chunk_ratios: Vec<f64>,
    /// Exec storms: the ratio with each half's time per exec over its reference work's (the
    /// VM's speed in that window, see `load::Reference`).
    corrected: Vec<f64>,
    /// Exec storms: guard-off over guard-on time of the reference work (how much faster the
    /// VM ran in the guard-on half).
    reference_speed: Vec<f64>,
    /// The agent's CPU share during each guard-on half (1.0 = one core).
    cpu: Vec<f64>,
    rss_kib: u64,
    lost: u64,
}

impl Overhead {
    /// Runs `measure` with the guard on, and keeps the agent's CPU share over it and over
    /// `tail` after it (work the load queued is part of its cost), its peak RSS and losses.
    pub(super) fn with_guard<T>(
        &mut self,
        c: &Ctx,
        settle: Duration,
        tail: Duration,
        measure: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let g = c.start_guard(&[])?;
        std::thread::sleep(settle);
        let c0 = g.cpu_s();
        let t = Instant::now();
        let v = measure()?;
        std::thread::sleep(tail);
        self.cpu.push((g.cpu_s() - c0) / t.elapsed().as_secs_f64());
        self.rss_kib = self.rss_kib.max(g.peak_rss_kib());
        self.lost += g.stop()?.lost();
        Ok(v)
    }

    pub(super) fn row(&self, name: &str, unit: &str) -> String {
        let ratio = median(&self.ratios);
        let (lo, hi) = min_max(&self.ratios);
        let corrected = if self.corrected.is_empty() {
            String::new()
        } else {
            let (lo, hi) = min_max(&self.corrected);
            format!("**{:.3}** ({lo:.3}–{hi:.3})", median(&self.corrected))
        };
        format!(
            "| {name} | {} {unit} | {} {unit} | **{ratio:.3}** ({lo:.3}–{hi:.3}) | {corrected} | {:.1}% | {} MiB | {} |",
            spread(&self.off, 0),
            spread(&self.on, 0),
            100.0 * median(&self.cpu),
            self.rss_kib / 1024,
            self.lost,
        )
    }

    pub(super) fn json(&self, unit: &str) -> Value {
        let mut v = json!({"unit": unit, "off": stats(&self.off), "on": stats(&self.on), "ratio": stats(&self.ratios),
                           "ratio_interval95": median_interval(&self.ratios),
                           "agent_cpu_share": stats(&self.cpu), "agent_rss_kib": self.rss_kib, "events_lost": self.lost});
        if !self.all_chunk_ratios.is_empty() {
            v["ratio_all_chunks"] = stats(&self.all_chunk_ratios);
        }
        if !self.corrected.is_empty() {
            v["ratio_speed_corrected"] = stats(&self.corrected);
            v["ratio_speed_corrected_interval95"] = json!(median_interval(&self.corrected));
            v["reference_speed_on_over_off"] = stats(&self.reference_speed);
        }
        // Rounds alternate which half runs first (even rounds: guard off first).
        let order = |first: usize| -> Vec<f64> { self.ratios.iter().skip(first).step_by(2).copied().collect() };
        v["ratio_by_order"] = json!({"off_first": median(&order(0)), "on_first": median(&order(1))});
        v
    }
}

/// An exec storm as one steady load (two threads of fork+exec) for the whole scenario, a
/// window of it with the guard off and one with it on per round, in alternating order, each
/// EXEC_SETTLE after a guard's start or stop. A window counts all its chunks: while records
/// flow the agent drains up to 100 ms apart, a millisecond or so each on either core, so its
/// drains land in some chunks of EXEC_CHUNK execs and not in others, and only the mean counts
/// every one (it was also the steadier measure without a guard: 6-8% sd between windows,
/// against 6.5-11% for the median chunk). Separate whole runs, seconds apart on a VM whose
/// speed jumps, swung ±25%.
pub(super) fn exec_overhead(c: &Ctx, cgroup: Option<&Path>, rounds: usize) -> Result<Overhead> {
    let mut o = Overhead::default();
    let load = SteadyLoad::start("exec-steady", EXEC_CHUNK, cgroup)?;
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let first_off = (round % 2 == 0).then(|| load.window(EXEC_WINDOW));
        let on = o.with_guard(c, EXEC_SETTLE, Duration::ZERO, || Ok(load.window(EXEC_WINDOW)))?;
        // The guard's teardown is not the guard-off half's cost.
        std::thread::sleep(EXEC_SETTLE);
        pairs.push((first_off.unwrap_or_else(|| load.window(EXEC_WINDOW)), on));
    }
    let chunks = load.finish()?;
    for (off, on) in pairs {
        let (off, on) = (chunks.in_window(off)?, chunks.in_window(on)?);
        // ns per exec of one thread; two threads run.
        o.off.push(2e9 / off.all);
        o.on.push(2e9 / on.all);
        o.ratios.push(off.all / on.all);
        let (Some(ref_off), Some(ref_on), Some(norm_off), Some(norm_on)) =
            (off.reference, on.reference, off.normalized, on.normalized)
        else {
            bail!("the exec storm timed no reference work");
        };
        o.corrected.push(norm_off / norm_on);
        o.reference_speed.push(ref_off / ref_on);
    }
    Ok(o)
}

/// A steady load in the notebook: one process for the whole scenario, a window with the guard
/// off and one with it on per round, back to back and in alternating order. `per_op` turns ns
/// per operation into the unit shown.
pub(super) fn steady_overhead(
    c: &Ctx,
    kind: &str,
    chunk: u64,
    rounds: usize,
    per_op: fn(f64) -> f64,
) -> Result<(Overhead, Value)> {
    steady_overhead_in(c, kind, chunk, rounds, per_op, Some(&c.nb))
}

/// [`steady_overhead`] with the load in `cgroup` (None: the bench's own, outside notebooks).
pub(super) fn steady_overhead_in(
    c: &Ctx,
    kind: &str,
    chunk: u64,
    rounds: usize,
    per_op: fn(f64) -> f64,
    cgroup: Option<&Path>,
) -> Result<(Overhead, Value)> {
    let mut o = Overhead::default();
    let load = SteadyLoad::start(kind, chunk, cgroup)?;
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let first_off = (round % 2 == 0).then(|| load.window(WINDOW));
        let on = o.with_guard(c, Duration::ZERO, Duration::ZERO, || Ok(load.window(WINDOW)))?;
        std::thread::sleep(SETTLE);
        pairs.push((first_off.unwrap_or_else(|| load.window(WINDOW)), on));
    }
    // Then the same load by CPU accounting, with a guard of its own.
    let g = c.start_guard(&[])?;
    let mut window = None;
    let share = accounting::measure(&g, || {
        window = Some(load.window(ACCOUNTING_WINDOW));
        Ok(())
    });
    g.stop()?;
    let share = share?;
    let chunks = load.finish()?;
    let window = window.context("the accounting window did not run")?;
    let accounting = share.json(chunks.ops_in(window));
    for (off, on) in pairs {
        let (off, on) = (chunks.in_window(off)?, chunks.in_window(on)?);
        o.off.push(per_op(off.fastest));
        o.on.push(per_op(on.fastest));
        // Fewer ns per operation with the guard on is a ratio above 1.
        o.ratios.push(off.fastest / on.fastest);
        o.all_chunk_ratios.push(off.all / on.all);
    }
    Ok((o, accounting))
}

/// Exec storms of 1500 per accounting (the rounds' size), enough for /proc/stat's ticks.
pub(super) const ACCOUNTING_RUNS: usize = 5;
/// How long a steady load is accounted for: 500 of /proc/stat's ticks of the one busy CPU.
pub(super) const ACCOUNTING_WINDOW: Duration = Duration::from_secs(5);

/// Execs run before an exec storm is accounted for.
pub(super) const WARM_UP_EXECS: u64 = 100;

/// The guard's share of an exec storm's CPU ([`accounting`]), with a guard of its own.
///
/// The first exec in a notebook root resolves that root's identities (its interpreters, its
/// system binaries), once per root: a warm-up takes it, and its agent CPU is reported on its
/// own, so the storm's per-exec figure is the steady state, as the timed rounds' windows
/// (which start seconds into a running storm) measure it.
pub(super) fn exec_accounting(c: &Ctx, cgroup: Option<&Path>) -> Result<Value> {
    let g = c.start_guard(&[])?;
    std::thread::sleep(EXEC_SETTLE);
    let before = g.cpu_s();
    let warm_up = load("exec", WARM_UP_EXECS, 0, cgroup).map(|_| std::thread::sleep(EXEC_TAIL));
    let warm_up_agent_ms = (g.cpu_s() - before) * 1000.0;
    let a = warm_up.and_then(|()| accounting::exec_storm(&g, 1500, ACCOUNTING_RUNS, cgroup, EXEC_TAIL));
    g.stop()?;
    let mut a = a?;
    a["warm_up"] = json!({"execs": WARM_UP_EXECS, "agent_ms": warm_up_agent_ms});
    Ok(a)
}

pub(super) fn storms(c: &mut Ctx) -> Result<()> {
    let nb = c.nb.clone();
    let exec_nb = exec_overhead(c, Some(&nb), c.rounds(ROUNDS_NOTEBOOK))?;
    let accounting_nb = exec_accounting(c, Some(&nb))?;
    let warm_up_agent_ms = accounting_nb["warm_up"]["agent_ms"].as_f64();
    let exec_out = exec_overhead(c, None, c.rounds(ROUNDS_OUTSIDE))?;
    let accounting_out = exec_accounting(c, None)?;
    let (connect, accounting_connect) =
        steady_overhead(c, "connect", CONNECT_CHUNK, c.rounds(CONNECT_ROUNDS), |ns| 1e9 / ns)?;
    let (null, accounting_null) = steady_overhead(c, "null", NULL_CHUNK, c.rounds(NULL_ROUNDS), |ns| ns)?;
    let scenarios: [(&str, &str, &str, Overhead, Value); 4] = [
        ("exec storm (notebook cgroup)", "ops/s", "exec", exec_nb, accounting_nb),
        ("exec storm (outside notebooks)", "ops/s", "exec", exec_out, accounting_out),
        ("connect storm (notebook cgroup)", "ops/s", "connect", connect, accounting_connect),
        ("null syscall getppid (notebook cgroup)", "ns/call", "call", null, accounting_null),
    ];
    let mut rows = Vec::new();
    let mut accounting_rows = Vec::new();
    let mut json = Map::new();
    for (name, unit, op, o, acct) in &scenarios {
        rows.push(o.row(name, unit));
        let mut v = o.json(unit);
        accounting_rows.push(accounting::row(name, op, acct));
        eprintln!("bench: {name}: by CPU accounting {:.3}", acct["ratio_by_accounting"].as_f64().unwrap_or(f64::NAN));
        v["cpu_accounting"] = acct.clone();
        json.insert((*name).into(), v);
        let (lo, hi) = min_max(&o.ratios);
        eprintln!("bench: {name}: ratio {:.3} ({lo:.3}–{hi:.3})", median(&o.ratios));
    }
    c.results.insert("storms".into(), json.into());
    c.md.push(prose::render(
        prose::OVERHEAD,
        &[
            ("rounds_notebook", c.rounds(ROUNDS_NOTEBOOK).to_string()),
            ("rounds_outside", c.rounds(ROUNDS_OUTSIDE).to_string()),
            ("exec_chunk", EXEC_CHUNK.to_string()),
            ("exec_window_s", EXEC_WINDOW.as_secs_f64().to_string()),
            ("exec_settle_s", EXEC_SETTLE.as_secs_f64().to_string()),
            ("reference", load::reference_size()),
            ("connect_rounds", c.rounds(CONNECT_ROUNDS).to_string()),
            ("null_rounds", c.rounds(NULL_ROUNDS).to_string()),
            ("connect_chunk", CONNECT_CHUNK.to_string()),
            ("null_chunk", NULL_CHUNK.to_string()),
            ("window_s", WINDOW.as_secs_f64().to_string()),
            ("rows", rows.join("\n")),
        ],
    )?);
    let warm_up_note = warm_up_agent_ms.map_or(String::new(), |ms| {
        format!(": in the notebook, whose first exec resolves the root's identities once, the agent spent {ms:.1} ms of CPU on the warm-up, those included")
    });
    c.md.push(prose::render(
        prose::ACCOUNTING,
        &[
            ("accounting_runs", ACCOUNTING_RUNS.to_string()),
            ("warm_up_execs", WARM_UP_EXECS.to_string()),
            ("warm_up_note", warm_up_note),
            ("accounting_window_s", ACCOUNTING_WINDOW.as_secs_f64().to_string()),
            ("rows", accounting_rows.join("\n")),
        ],
    )?);
    Ok(())
}
