//! Loss: the fastest sustained storm on the default ring, then a small ring overrun on purpose.

use super::*;

/// Loss: the fastest sustained exec storm this machine makes, on the default ring (must lose
/// nothing); then rising rates on a deliberately small ring, to show where loss starts and
/// that every lost event is counted and announced.
pub(super) fn loss(c: &mut Ctx) -> Result<()> {
    let mut json = Map::new();
    // Sustained: four threads of fork+exec keep both cores busy for several seconds.
    let n = 16000;
    let g = c.start_guard(&[])?;
    let rate = load("exec-max", n, 0, Some(&c.nb))?;
    std::thread::sleep(Duration::from_millis(1500));
    let peak = g.peak_rss_kib();
    let totals = g.stop()?;
    let sustained = json!({"execs": n, "rate": rate, "received": totals.received, "lost": totals.lost(),
                           "alerted_lost": alerted_losses(&fs_alerts(&c.dir)), "agent_peak_rss_kib": peak});
    eprintln!("bench: sustained exec storm: {rate:.0}/s, {} events, {} lost", totals.received, totals.lost());
    json.insert("sustained, default ring".into(), sustained);

    let mut rows = Vec::new();
    let mut ramp = Vec::new();
    let ring = SMALL_RING.to_string();
    for target in [250u64, 500, 1000, 2000, 0] {
        let n = if target == 0 { 6000 } else { target * 3 };
        let g = c.start_guard(&["--ring-bytes", &ring])?;
        let rate = load("exec-max", n, target, Some(&c.nb))?;
        // Losses are reported every second and at shutdown.
        std::thread::sleep(Duration::from_millis(1500));
        let totals = g.stop()?;
        let alerted = alerted_losses(&fs_alerts(&c.dir));
        let target_s = if target == 0 { "as fast as possible".to_string() } else { format!("{target}/s") };
        rows.push(format!(
            "| {target_s} | {rate:.0}/s | {} | {} | {} | {} |",
            totals.received,
            totals.lost(),
            alerted,
            if alerted == totals.lost() { "yes" } else { "**no**" }
        ));
        eprintln!(
            "bench: {SMALL_RING}-byte ring at {target_s}: {rate:.0}/s, {} lost, {alerted} alerted",
            totals.lost()
        );
        ramp.push(json!({"target_rate": target, "rate": rate, "execs": n, "received": totals.received,
                         "lost_kernel": totals.lost_kernel, "lost_queue": totals.lost_queue, "alerted_lost": alerted}));
    }
    let zero_loss = ramp
        .iter()
        .filter(|r| r["lost_kernel"] == 0 && r["lost_queue"] == 0)
        .filter_map(|r| r["rate"].as_f64())
        .fold(0.0, f64::max);
    json.insert(
        "small ring".into(),
        json!({"ring_bytes": SMALL_RING, "rates": ramp, "highest_zero_loss_rate": zero_loss}),
    );
    c.results.insert("loss".into(), json.clone().into());
    let s = &json["sustained, default ring"];
    c.md.push(prose::render(
        prose::LOSS,
        &[
            ("execs", n.to_string()),
            ("rate", format!("{:.0}", s["rate"].as_f64().unwrap_or(0.0))),
            ("received", s["received"].to_string()),
            ("lost", s["lost"].to_string()),
            ("small_ring_kib", (SMALL_RING >> 10).to_string()),
            ("zero_loss", format!("{zero_loss:.0}")),
            ("rows", rows.join("\n")),
        ],
    )?);
    Ok(())
}
