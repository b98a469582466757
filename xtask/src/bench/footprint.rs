//! The agent at rest.

use super::*;

/// The agent at rest: RSS and CPU over ten idle seconds with a notebook present.
pub(super) fn footprint(c: &mut Ctx) -> Result<()> {
    let g = c.start_guard(&[])?;
    let c0 = g.cpu_s();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (g.cpu_s() - c0) / t.elapsed().as_secs_f64();
    let rss = g.rss_kib();
    g.stop()?;
    eprintln!("bench: idle agent: {:.2}% CPU, {} MiB RSS", cpu * 100.0, rss / 1024);
    c.results.insert("footprint (idle)".into(), json!({"cpu_share": cpu, "rss_kib": rss}));
    c.md.push(prose::render(
        prose::FOOTPRINT,
        &[("cpu_percent", format!("{:.2}", cpu * 100.0)), ("rss_mib", (rss / 1024).to_string())],
    )?);
    Ok(())
}
