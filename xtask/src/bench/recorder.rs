//! The seccomp recorder's cost on a syscall load, attached and not.

use super::*;

/// How long each recorder configuration runs per round.
pub(super) const RECORDER_WINDOW: Duration = Duration::from_millis(1000);

/// The seccomp recorder: getppid with nothing on sys_enter, with an empty sys_enter program
/// (the floor any recorder pays), and with the recorder recording another cgroup and this one.
/// One load runs throughout; each round gives every configuration a window, in an order that
/// rotates from round to round, and what a configuration adds is measured against the round's
/// own "nothing" window.
pub(super) fn recorder(c: &mut Ctx) -> Result<()> {
    let here = c.mount.join("bench-recorded-here");
    let other = c.mount.join("bench-recorded-other");
    fs::create_dir_all(&here)?;
    fs::create_dir_all(&other)?;
    let rel = |p: &Path| Path::new("/").join(p.strip_prefix(&c.mount).unwrap_or(p)).display().to_string();
    let rec_out = c.dir.join("recording.json").display().to_string();
    let (rel_other, rel_here) = (rel(&other), rel(&here));
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
    let load = SteadyLoad::start("null", NULL_CHUNK, Some(&here))?;
    let mut windows = vec![Vec::new(); configs.len()];
    for round in 0..c.rounds(RECORDER_ROUNDS) {
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            let helper = match &configs[i].1 {
                Some(a) => Some(start_helper(c.guard, a)?),
                None => None,
            };
            windows[i].push(load.window(RECORDER_WINDOW));
            if let Some(mut h) = helper {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(h.id() as i32, libc::SIGINT) };
                h.wait()?;
                std::thread::sleep(SETTLE);
            }
        }
    }
    let chunks = load.finish()?;
    let ns = windows.iter().map(|ws| chunks.fastest_in(ws)).collect::<Result<Vec<_>>>()?;
    // Per round, against that round's own baseline.
    let added: Vec<Vec<f64>> = ns.iter().map(|v| v.iter().zip(&ns[0]).map(|(x, base)| x - base).collect()).collect();
    let mut rows = Vec::new();
    let mut json = Map::new();
    for (i, (name, _)) in configs.iter().enumerate() {
        let add = median(&added[i]);
        // The recorders against the floor, round by round like the overhead ratios, so the
        // median gets an interval: the floor itself moves with this VM's speed between
        // rounds. A round whose floor did not show (≤ 0 ns) counts as a miss.
        let vs_floor: Vec<f64> = if i >= 2 {
            added[i].iter().zip(&added[1]).map(|(a, f)| if *f > 0.0 { a / f } else { f64::INFINITY }).collect()
        } else {
            Vec::new()
        };
        let above_floor: Vec<f64> = added[i].iter().zip(&added[1]).map(|(a, f)| a - f).collect();
        let (cell, extra) = if vs_floor.is_empty() {
            (String::new(), String::new())
        } else {
            let interval = median_interval(&vs_floor).map(|(lo, hi)| format!(" ({lo:.2}–{hi:.2})")).unwrap_or_default();
            (format!("**{:.2}**{interval}", median(&vs_floor)), format!("{:+.1} ns", median(&above_floor)))
        };
        rows.push(format!("| {name} | {} ns | {add:+.1} ns | {extra} | {cell} |", spread(&ns[i], 1)));
        let mut entry = json!({"ns_per_call": stats(&ns[i]), "added_ns": stats(&added[i])});
        if !vs_floor.is_empty() {
            entry["vs_floor"] = stats(&vs_floor);
            entry["vs_floor_interval95"] = json!(median_interval(&vs_floor));
            entry["above_floor_ns"] = stats(&above_floor);
        }
        json.insert((*name).into(), entry);
        eprintln!("bench: getppid, {name}: {:.1} ns/call ({add:+.1})", median(&ns[i]));
    }
    c.results.insert("seccomp recorder (getppid)".into(), json.into());
    let _ = fs::remove_dir(&here);
    let _ = fs::remove_dir(&other);
    c.md.push(prose::render(
        prose::RECORDER,
        &[
            ("rounds", c.rounds(RECORDER_ROUNDS).to_string()),
            ("window_s", RECORDER_WINDOW.as_secs_f64().to_string()),
            ("rows", rows.join("\n")),
        ],
    )?);
    Ok(())
}

/// Starts `guard ARGS…` and waits until it says its sys_enter program is attached.
pub(super) fn start_helper(bin: &Path, args: &[&str]) -> Result<Child> {
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
