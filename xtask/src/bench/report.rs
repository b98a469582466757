//! The targets table of BENCHMARKS.md, from one run's results.

use super::*;

/// One row of the targets table: `value` against `limit`, shown with `unit`, and the 95%
/// interval of the value where it is a median over rounds.
pub(super) fn target_row(
    what: &str,
    value: Option<f64>,
    interval: Option<(f64, f64)>,
    at_most: bool,
    limit: f64,
    unit: &str,
    digits: usize,
) -> String {
    let target = format!("{} {limit}{unit}", if at_most { "≤" } else { "≥" });
    let meets = |v: f64| if at_most { v <= limit } else { v >= limit };
    let Some(v) = value else { return format!("| {what} | {target} | not measured | | — |") };
    // A median whose interval straddles the target does not settle it either way.
    let verdict = match interval {
        Some((lo, hi)) if meets(lo) != meets(hi) => {
            format!("not resolved: median {}", if meets(v) { "meets it" } else { "misses it" })
        }
        _ if meets(v) => "yes".into(),
        _ => "**no**".into(),
    };
    // Rounded outwards, so that an interval that straddles the target never prints as if it
    // cleared it (0.9795 is "0.979", not "0.980").
    let scale = 10f64.powi(digits as i32);
    let (down, up) = (|v: f64| (v * scale + 1e-9).floor() / scale, |v: f64| (v * scale - 1e-9).ceil() / scale);
    let interval = interval.map(|(lo, hi)| format!("{:.digits$}–{:.digits$}", down(lo), up(hi))).unwrap_or_default();
    format!("| {what} | {target} | {v:.digits$}{unit} | {interval} | {verdict} |")
}

/// A `[lo, hi]` interval as the results store it.
pub(super) fn interval95(v: &Value) -> Option<(f64, f64)> {
    let a = v.as_array()?;
    Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?))
}

/// The targets the benchmark exists to check, met or not, from the results of this run.
pub(super) fn targets(r: &Map<String, Value>) -> Result<String> {
    let num = |v: &Value| v.as_f64();
    let sustained = &r["loss"]["sustained, default ring"];
    let peak_rss = r["storms"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|s| s["agent_rss_kib"].as_f64())
        .chain(num(&sustained["agent_peak_rss_kib"]))
        .chain(num(&r["footprint (idle)"]["peak_rss_kib"]))
        .chain(num(&r["footprint (busy)"]["peak_rss_kib"]))
        .chain(
            r["scale"]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(|s| s["agent_peak_rss_kib"].as_f64()),
        )
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let mut rows = Vec::new();
    for (what, storm, limit) in [
        ("exec storm, notebook cgroup", "exec storm (notebook cgroup)", 0.98),
        ("exec storm, outside notebooks", "exec storm (outside notebooks)", 0.98),
        ("connect storm, notebook cgroup", "connect storm (notebook cgroup)", 0.98),
        ("null syscall, no recording", "null syscall getppid (notebook cgroup)", 0.99),
    ] {
        let s = &r["storms"][storm];
        rows.push(target_row(
            what,
            num(&s["ratio"]["median"]),
            interval95(&s["ratio_interval95"]),
            false,
            limit,
            "",
            3,
        ));
        if let Some(v) = num(&s["ratio_speed_corrected"]["median"]) {
            let interval = interval95(&s["ratio_speed_corrected_interval95"]);
            rows.push(target_row(&format!("{what}, speed-corrected"), Some(v), interval, false, limit, "", 3));
        }
        if let Some(a) = num(&s["cpu_accounting"]["ratio_by_accounting"]) {
            rows.push(target_row(&format!("{what}, by CPU accounting"), Some(a), None, false, limit, "", 3));
        }
    }
    for (what, config) in [
        ("recorder, another cgroup recorded, vs empty program", "recorder, another cgroup recorded"),
        ("recorder, this cgroup recorded, vs empty program", "recorder, this cgroup recorded"),
    ] {
        let rec = &r["seccomp recorder (getppid)"][config];
        rows.push(target_row(
            what,
            num(&rec["vs_floor"]["median"]),
            interval95(&rec["vs_floor_interval95"]),
            true,
            1.3,
            "×",
            2,
        ));
    }
    let fastest =
        format!("events lost at the fastest sustained storm ({:.0} execs/s)", num(&sustained["rate"]).unwrap_or(0.0));
    rows.push(target_row(&fastest, num(&sustained["lost"]), None, true, 0.0, "", 0));
    let p99 = num(&r["exec-to-alert latency (file sink)"]["from_exec_ms"]["p99"]);
    rows.push(target_row("exec-to-alert p99", p99, None, true, 10.0, " ms", 2));
    let idle = num(&r["footprint (idle)"]["rss_kib"]);
    rows.push(target_row("agent RSS, idle", idle.map(|k| k / 1024.0), None, true, 32.0, " MiB", 1));
    let busy = num(&r["footprint (busy)"]["peak_rss_kib"]);
    rows.push(target_row(
        "agent peak RSS, 200 notebooks and exec storms on both cores",
        busy.map(|k| k / 1024.0),
        None,
        true,
        48.0,
        " MiB",
        1,
    ));
    rows.push(target_row("agent peak RSS, any section", peak_rss.map(|k| k / 1024.0), None, true, 48.0, " MiB", 1));
    let scale = &r["scale"];
    rows.push(target_row(
        "ready with 1000 notebooks running",
        num(&scale["1000"]["ready_s"]),
        None,
        true,
        2.0,
        " s",
        2,
    ));
    let missed = match (num(&scale["1000"]["execs_checked"]), num(&scale["1000"]["attributed"])) {
        (Some(all), Some(right)) => Some(all - right),
        _ => None,
    };
    rows.push(target_row("execs of 1000 notebooks not named for their own user", missed, None, true, 0.0, "", 0));
    for (what, key) in [
        ("agent CPU per exec, 1000 notebooks over 10", "agent_per_exec_1000_over_10"),
        ("programs' CPU per exec, 1000 notebooks over 10", "programs_per_exec_1000_over_10"),
    ] {
        rows.push(target_row(what, num(&scale[key]), None, true, 1.2, "×", 2));
    }
    prose::render(prose::TARGETS, &[("rows", rows.join("\n"))])
}
