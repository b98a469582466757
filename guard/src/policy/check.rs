//! `guard policy check`: every problem it can find in one run, each at its own line. A parse
//! stops at the first error, so after each one the block it points at (its line and the lines
//! indented below it) is set aside and the rest is read again.

use super::{Policy, PolicyError};

/// Rounds of "set the bad block aside, read again" before giving up on finding more.
const MAX_ERRORS: usize = 50;

/// The policy, or every error found in `text`.
pub fn check_all(origin: &str, text: &str) -> Result<Policy, Vec<PolicyError>> {
    let mut errors: Vec<PolicyError> = Vec::new();
    let mut text = text.to_string();
    while errors.len() < MAX_ERRORS {
        let e = match Policy::from_str(origin, &text) {
            Ok(p) if errors.is_empty() => return Ok(p),
            Ok(_) => break,
            Err(e) => at_its_line(e, &text),
        };
        let line = e.line;
        errors.push(e);
        let Some(line) = line else { break };
        let rest = without_block(&text, line);
        if rest == text {
            break;
        }
        text = rest;
    }
    Err(errors)
}

/// A duplicate key is reported at the start of its mapping; point at the second occurrence.
fn at_its_line(mut e: PolicyError, text: &str) -> PolicyError {
    let Some(key) = e.message.strip_prefix("duplicate field `").and_then(|m| m.strip_suffix('`')) else { return e };
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let hits: Vec<(usize, usize)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            t.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|(i, l)| (i + 1, indent_of(l)))
        .collect();
    if let Some(&(first_line, indent)) = hits.first() {
        if let Some(&(line, _)) = hits.iter().skip(1).find(|(l, i)| *i == indent && *l > first_line) {
            e.line = Some(line);
            e.column = Some(indent + 1);
        }
    }
    e
}

/// `text` with line `line` (1-based) and the lines indented deeper below it blanked (kept as
/// empty lines, so later errors keep their line numbers).
fn without_block(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.get(line.saturating_sub(1)) else { return text.to_string() };
    let indent = at.len() - at.trim_start().len();
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    let mut inside = false;
    for (i, l) in lines.iter().enumerate() {
        if i + 1 == line {
            inside = true;
            out.push("");
            continue;
        }
        if inside && (l.trim().is_empty() || l.len() - l.trim_start().len() > indent) {
            out.push("");
            continue;
        }
        inside = false;
        out.push(l);
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_at_its_line_in_one_run() {
        let text = "mdoe: monitor\nrules:\n  disabled: [notebook.nope]\nwritable_paths: [tmp]\nmode: monitor\nmode: enforce\negress:\n  allow:\n    - {cidr: 10.0.0.0/33}\n";
        let errors = check_all("p.yaml", text).unwrap_err();
        let at: Vec<(Option<usize>, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(at.contains(&(Some(1), "mdoe")), "{errors:#?}");
        assert!(at.iter().any(|(l, _)| *l == Some(6)), "the duplicate `mode` at its second line: {errors:#?}");
        assert!(errors.iter().any(|e| e.message.contains("prefix length 33")), "{errors:#?}");
        assert!(errors.iter().any(|e| e.key == "rules.disabled[0]"), "{errors:#?}");
        assert!(errors.iter().any(|e| e.key == "writable_paths[0]"), "{errors:#?}");
        assert!(check_all("ok.yaml", "mode: enforce\n").is_ok());
    }
}
