//! The agent's memory and CPU: at rest, and at its busiest with many notebooks.

use super::*;

/// Notebooks present while the busy agent is measured.
const BUSY_NOTEBOOKS: usize = 200;
/// Exec storms (from two threads, so both cores) over the notebooks while it is.
const BUSY_STORMS: usize = 20;
const BUSY_EXECS: u64 = 1000;

/// The agent at rest (idle seconds with a notebook present), then with 200 notebooks running
/// before it starts and exec storms on both cores spread over them: RSS, its peak, and where
/// it is.
pub(super) fn footprint(c: &mut Ctx) -> Result<()> {
    let g = c.start_guard(&[])?;
    let c0 = g.cpu_s();
    let t = Instant::now();
    std::thread::sleep(c.scaled_duration(Duration::from_secs(10)));
    let cpu = (g.cpu_s() - c0) / t.elapsed().as_secs_f64();
    let (idle, idle_peak, idle_rss) = (g.memory()?, g.peak_rss_kib(), g.rss_kib());
    g.stop()?;

    let nbs = scale::Notebooks::start(&c.mount, BUSY_NOTEBOOKS)?;
    let g = c.start_guard(&[])?;
    let stride = BUSY_NOTEBOOKS / BUSY_STORMS;
    for i in 0..BUSY_STORMS {
        load("exec", BUSY_EXECS, 0, Some(&nbs.cgroups[i * stride]))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let (busy, busy_peak, busy_rss) = (g.memory()?, g.peak_rss_kib(), g.rss_kib());
    g.stop()?;
    drop(nbs);

    eprintln!(
        "bench: idle agent: {:.2}% CPU, {} MiB RSS (peak {}); with {BUSY_NOTEBOOKS} notebooks and storms: {} MiB (peak {})",
        cpu * 100.0,
        idle_rss / 1024,
        idle_peak / 1024,
        busy_rss / 1024,
        busy_peak / 1024
    );
    c.results.insert(
        "footprint (idle)".into(),
        json!({"cpu_share": cpu, "rss_kib": idle_rss, "peak_rss_kib": idle_peak, "memory": idle.json()}),
    );
    c.results.insert(
        "footprint (busy)".into(),
        json!({"notebooks": BUSY_NOTEBOOKS, "execs": BUSY_EXECS * BUSY_STORMS as u64,
               "rss_kib": busy_rss, "peak_rss_kib": busy_peak, "memory": busy.json()}),
    );
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let row = |what: &str, m: &Memory, rss: u64, peak: u64| {
        format!(
            "| {what} | {} | {} | {} | {} | {} | {} |",
            mib(m.ring),
            mib(m.binary),
            mib(m.libraries),
            mib(m.heap),
            mib(rss),
            mib(peak)
        )
    };
    c.md.push(prose::render(
        prose::FOOTPRINT,
        &[
            ("cpu_percent", format!("{:.2}", cpu * 100.0)),
            ("idle_seconds", c.scaled_duration(Duration::from_secs(10)).as_secs().to_string()),
            ("notebooks", BUSY_NOTEBOOKS.to_string()),
            ("storms", BUSY_STORMS.to_string()),
            ("execs", BUSY_EXECS.to_string()),
            (
                "rows",
                [
                    row("idle, one notebook", &idle, idle_rss, idle_peak),
                    row(&format!("{BUSY_NOTEBOOKS} notebooks, exec storms"), &busy, busy_rss, busy_peak),
                ]
                .join("\n"),
            ),
        ],
    )?);
    Ok(())
}
