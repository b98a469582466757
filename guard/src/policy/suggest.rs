//! `guard policy suggest`: from the alerts of a monitoring period, propose helper allowances —
//! program (path and what kind of place it is in), parent, argument shapes, how often and for
//! whom — as a `helpers:` section `guard policy check` accepts. Never applied by itself: an
//! operator reads it, keeps what is benign, and loads it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
};

use serde_json::Value;

use super::{Helper, HelperParent, Location};

/// Distinct argument shapes kept per program before any arguments are allowed instead.
const MAX_SHAPES: usize = 8;

/// What kind of place a program is in, judged from its path: the location class and the name
/// (or path below the class's directory) a helper can name it by, or None for a place no class
/// covers (the user's own files: named by path, and trusted only if the user could not have
/// written the file).
pub fn location_of(path: &str) -> Option<(Location, String)> {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some((_, below)) = path.split_once(marker) {
            return Some((Location::SitePackages, below.to_string()));
        }
    }
    let (dir, name) = path.rsplit_once('/')?;
    if super::identity::SYSTEM_DIRS.contains(&dir) {
        return Some((Location::System, name.to_string()));
    }
    for base in super::locations::LIBEXEC_DIRS {
        if let Some(below) = path.strip_prefix(base).and_then(|p| p.strip_prefix('/')) {
            return Some((Location::Libexec, below.to_string()));
        }
    }
    let user = path.starts_with("/home/") || path.contains("/.local/") || path.starts_with("/tmp/");
    (!user && dir.ends_with("/bin") && (path.starts_with("/opt/") || path.starts_with("/srv/")))
        .then(|| (Location::PythonEnv, name.to_string()))
}

/// Words for a location, in the suggestion's comment.
fn location_words(path: &str) -> &'static str {
    match location_of(path) {
        Some((Location::SitePackages, _)) => {
            "a Python package's files (trusted only where the image or an admin installed it)"
        }
        Some((Location::System, _)) => "the system",
        Some((Location::Libexec, _)) => "a program's private files",
        Some((Location::PythonEnv, _)) => "an interpreter environment",
        None if path.starts_with("/home/") || path.contains("/.local/") || path.starts_with("/tmp/") => {
            "the user's own files: the user's code, which no helper makes trusted; install it in the image"
        }
        None => "elsewhere (named by path)",
    }
}

/// One argument of argv[1..] as a shape: options stay, values become `*` (`-lfoo` → `-l*`).
fn arg_shape(a: &str) -> String {
    if let Some(rest) = a.strip_prefix("--") {
        return match rest.split_once('=') {
            Some((k, v)) if v.contains('/') || v.len() > 24 => format!("--{k}=*"),
            _ => a.to_string(),
        };
    }
    if a.starts_with('-') && a.len() > 2 && a.as_bytes()[1].is_ascii_alphabetic() {
        // -lNAME, -L/dir, -o/path: a one-letter option with its value attached.
        let (opt, val) = a.split_at(2);
        return if val.contains('/') || matches!(opt, "-l" | "-L" | "-I" | "-o") {
            format!("{opt}*")
        } else {
            a.to_string()
        };
    }
    if a.starts_with('-') {
        return a.to_string();
    }
    "*".to_string()
}

#[derive(Default)]
struct Seen {
    count: usize,
    users: BTreeSet<String>,
    parents: BTreeSet<String>,
    shapes: BTreeSet<Vec<String>>,
}

/// Helper allowances for the non-Python execs in `alerts` (Falco JSON, one per line), after
/// `existing` (the policy's current helpers, kept as they are). Lines that are not alerts, and
/// alerts of other rules, are skipped; errors name the line.
pub fn suggest(alerts: &str, existing: &[Helper]) -> Result<String, String> {
    let mut by_program: BTreeMap<String, Seen> = BTreeMap::new();
    let mut read = 0;
    for (n, line) in alerts.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let a: Value = serde_json::from_str(line).map_err(|e| format!("line {}: not an alert: {e}", n + 1))?;
        read += 1;
        if a["rule"] != "notebook.non_python_exec" {
            continue;
        }
        let f = &a["output_fields"];
        let Some(exe) = f["proc.exepath"].as_str() else { continue };
        let seen = by_program.entry(exe.to_string()).or_default();
        // A summary of repeats says how many it stands for.
        seen.count += 1 + f["guard.count"].as_u64().unwrap_or(0) as usize;
        if let Some(u) = f["jupyterhub.user"].as_str() {
            seen.users.insert(u.to_string());
        }
        let parent = f["proc.pexepath"].as_str().unwrap_or("");
        let parent_name = parent.rsplit('/').next().unwrap_or("");
        seen.parents.insert(if parent_name.starts_with("python") { "python".into() } else { parent.to_string() });
        let args: Vec<String> = f["proc.args"]
            .as_array()
            .map(|a| a.iter().skip(1).filter_map(|x| x.as_str()).map(arg_shape).collect())
            .unwrap_or_default();
        seen.shapes.insert(args);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# guard policy suggest: {} helper allowance(s) proposed from {read} alert line(s), after the\n\
         # policy's {} existing helpers. Read each one: keep what is benign, delete the rest, then\n\
         # load it (this file is a policy; sections it leaves out come from the default).",
        by_program.len(),
        existing.len()
    );
    out.push_str("helpers:\n");
    for h in existing {
        out.push_str(&helper_yaml(h, None));
    }
    let taken: BTreeSet<&str> = existing.iter().map(|h| h.name.as_str()).collect();
    for (exe, seen) in &by_program {
        let base = exe.rsplit('/').next().unwrap_or(exe);
        let stem: String =
            base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let mut name = format!("suggested-{stem}");
        let mut i = 2;
        while taken.contains(name.as_str()) {
            name = format!("suggested-{stem}-{i}");
            i += 1;
        }
        let parent =
            if seen.parents.iter().all(|p| p == "python") { HelperParent::Python } else { HelperParent::Helper };
        let args = (seen.shapes.len() <= MAX_SHAPES).then(|| seen.shapes.iter().cloned().collect());
        let (programs, locations, paths) = match location_of(exe) {
            Some((class, name)) => (vec![name], vec![class], vec![]),
            None => (vec![], vec![], vec![exe.clone()]),
        };
        let h = Helper { name, programs, locations, paths, args, parent };
        let users: Vec<&str> = seen.users.iter().map(String::as_str).collect();
        let note = format!(
            "{} exec(s), users {}; parents {}; in {}{}",
            seen.count,
            if users.is_empty() { "-".into() } else { users.join(", ") },
            seen.parents.iter().cloned().collect::<Vec<_>>().join(", "),
            location_words(exe),
            if seen.shapes.len() > MAX_SHAPES { "; too many argument shapes: any arguments" } else { "" }
        );
        out.push_str(&helper_yaml(&h, Some(&note)));
    }
    Ok(out)
}

/// One helper as YAML (JSON strings are YAML scalars).
fn helper_yaml(h: &Helper, note: Option<&str>) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut y = String::new();
    if let Some(n) = note {
        let _ = writeln!(y, "  # {n}");
    }
    let _ = writeln!(y, "  - name: {}", q(&h.name));
    let list = |xs: &[String]| xs.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ");
    if !h.programs.is_empty() {
        let _ = writeln!(y, "    programs: [{}]", list(&h.programs));
        let classes: Vec<String> = h.locations.iter().map(|l| l.name().to_string()).collect();
        let _ = writeln!(y, "    in: [{}]", classes.join(", "));
    }
    if !h.paths.is_empty() {
        let _ = writeln!(y, "    paths: [{}]", list(&h.paths));
    }
    if let Some(alts) = &h.args {
        let alts: Vec<String> =
            alts.iter().map(|a| format!("[{}]", a.iter().map(|x| q(x)).collect::<Vec<_>>().join(", "))).collect();
        let _ = writeln!(y, "    args: [{}]", alts.join(", "));
    }
    if h.parent == HelperParent::Helper {
        let _ = writeln!(y, "    parent: helper");
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn alert(exe: &str, args: &[&str], parent: &str, user: &str) -> String {
        serde_json::json!({"rule": "notebook.non_python_exec", "output_fields": {
            "proc.exepath": exe, "proc.args": args, "proc.pexepath": parent, "jupyterhub.user": user}})
        .to_string()
    }

    #[test]
    fn proposes_helpers_that_the_policy_check_accepts_and_that_match_what_was_seen() {
        let lines = [
            alert("/usr/bin/lscpu", &["lscpu", "--parse=core"], "/opt/conda/bin/python3.11", "alice"),
            alert("/usr/bin/lscpu", &["lscpu", "--parse=core"], "/opt/conda/bin/python3.11", "bob"),
            alert("/usr/bin/ld", &["ld", "-t", "-o", "/dev/null", "-lfoo"], "/usr/bin/gcc", "alice"),
            alert("/home/jovyan/.local/bin/tool", &["tool", "/home/jovyan/x.csv"], "/usr/bin/python3", "alice"),
            serde_json::json!({"rule": "notebook.unexpected_egress", "output_fields": {}}).to_string(),
        ]
        .join("\n");
        let default = Policy::default_policy();
        let text = suggest(&lines, &default.helpers).unwrap();
        let p = Policy::from_str("suggested.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(p.helpers.len(), default.helpers.len() + 3, "{text}");
        let by = |n: &str| p.helpers.iter().find(|h| h.name == n).unwrap_or_else(|| panic!("{n}:\n{text}"));
        let lscpu = by("suggested-lscpu");
        assert_eq!(
            (lscpu.programs.as_slice(), lscpu.locations.as_slice()),
            (&["lscpu".to_string()][..], &[Location::System][..])
        );
        assert!(super::super::ArgMatcher::new(&lscpu.args).matches(&["--parse=core".into()]));
        assert!(!super::super::ArgMatcher::new(&lscpu.args).matches(&["--all".into()]));
        let ld = by("suggested-ld");
        assert_eq!(ld.parent, HelperParent::Helper, "its parent was the compiler, not Python");
        assert!(super::super::ArgMatcher::new(&ld.args).matches(&["-t", "-o", "/dev/null", "-lbar"].map(String::from)));
        assert!(text.contains("2 exec(s), users alice, bob"), "{text}");
        assert!(text.contains("the user's own files"), "a user's binary is said to be theirs:\n{text}");
        assert_eq!(by("suggested-tool").paths, ["/home/jovyan/.local/bin/tool"]);
        assert!(suggest("{not json", &[]).unwrap_err().contains("line 1"));
    }
}
