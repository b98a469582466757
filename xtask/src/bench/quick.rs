//! What kind of run wrote BENCHMARKS.md; for `--quick`, every 95% interval held against the
//! last full run's, so a reader sees where fewer rounds left this run less sure.

use super::*;

/// The results of the last full run, beside BENCHMARKS.md (a quick run never writes it).
pub(super) const FULL_RESULTS: &str = "BENCHMARKS.json";

/// Every `…_interval95` in `v`, with the path of keys that leads to it.
fn intervals(v: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, (f64, f64))>) {
    let Some(m) = v.as_object() else { return };
    for (k, x) in m {
        path.push(k.clone());
        match interval95(x) {
            Some(i) if k.ends_with("_interval95") => out.push((path.clone(), i)),
            _ => intervals(x, path, out),
        }
        path.pop();
    }
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Rows of this run's intervals against the full run's: result, this run, full run, verdict.
pub(super) fn compare(this: &Value, full: &Value) -> Vec<String> {
    let mut found = Vec::new();
    intervals(this, &mut Vec::new(), &mut found);
    let fmt = |(lo, hi): (f64, f64)| format!("{lo:.3}–{hi:.3} (±{:.3})", (hi - lo) / 2.0);
    found
        .into_iter()
        .map(|(path, i)| {
            let theirs = lookup(full, &path).and_then(interval95);
            let verdict = match theirs {
                Some(f) if i.1 - i.0 > (f.1 - f.0) * 1.0001 => "**wider**",
                Some(_) => "as narrow or narrower",
                None => "not in the full run",
            };
            format!(
                "| {} | {} | {} | {verdict} |",
                path.join(" / "),
                fmt(i),
                theirs.map(fmt).unwrap_or_else(|| "—".into())
            )
        })
        .collect()
}

/// The paragraph that says how BENCHMARKS.md was made.
pub(super) fn kind_of_run(results: &Map<String, Value>, root: &Path) -> Result<String> {
    let run = &results["run"];
    let minutes = run["minutes"].as_f64().unwrap_or(0.0);
    if run["quick"] != true {
        return Ok(format!("A full run: {minutes:.0} minutes. `cargo xtask bench --quick` makes every table below in about a tenth of the time, with fewer rounds.\n"));
    }
    let path = root.join(FULL_RESULTS);
    let full: Value = match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?,
        Err(_) => Value::Null,
    };
    let this = Value::Object(results.clone());
    let mut out = format!(
        "**A quick run** (`cargo xtask bench --quick`, {minutes:.1} minutes): every table of the full run, from about a twelfth of its rounds (never fewer than 7) and half its idle waits, so its medians are less sure. Its 95% intervals against those of the last full run (`{FULL_RESULTS}`); where this run's is wider, a verdict the full run settles may stay open here. `cargo xtask bench` makes the full run (about an hour) for releases.\n\n"
    );
    if full.is_null() {
        out.push_str("No full run on record to compare with.\n");
        return Ok(out);
    }
    if let Some(from) = full["seeded_from"].as_str() {
        out.push_str(&format!("The full run's intervals on record: {from}.\n\n"));
    }
    out.push_str("| result | this run's 95% interval | the full run's | this run's is |\n|---|---|---|---|\n");
    out.push_str(&compare(&this, &full).join("\n"));
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wider_intervals_are_marked() {
        let this = json!({"storms": {"exec": {"ratio_interval95": [0.95, 1.03], "median": 0.99},
                                     "null": {"ratio_interval95": [0.999, 1.001]}},
                          "new": {"x_interval95": [1.0, 2.0]}});
        let full = json!({"storms": {"exec": {"ratio_interval95": [0.98, 1.0]},
                                     "null": {"ratio_interval95": [0.998, 1.002]}}});
        let rows = compare(&this, &full);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        let row = |p: &str| rows.iter().find(|r| r.starts_with(&format!("| {p} |"))).unwrap();
        assert!(row("storms / exec / ratio_interval95").ends_with("| **wider** |"));
        assert!(row("storms / null / ratio_interval95").ends_with("| as narrow or narrower |"));
        assert!(row("new / x_interval95").ends_with("| — | not in the full run |"));
    }
}
