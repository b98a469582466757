//! BENCHMARKS.md's prose: one Markdown template per section (`prose/*.md`) whose `{{name}}`
//! placeholders this run's numbers fill, so the text reads as text and the code as code.

use anyhow::{bail, Result};

pub(super) const OVERHEAD: &str = include_str!("prose/overhead.md");
pub(super) const ACCOUNTING: &str = include_str!("prose/accounting.md");
pub(super) const RECORDER: &str = include_str!("prose/recorder.md");
pub(super) const PEERS: &str = include_str!("prose/peers.md");
pub(super) const LOSS: &str = include_str!("prose/loss.md");
pub(super) const LATENCY: &str = include_str!("prose/latency.md");
pub(super) const FOOTPRINT: &str = include_str!("prose/footprint.md");
pub(super) const SCALE: &str = include_str!("prose/scale.md");
pub(super) const FILES: &str = include_str!("prose/files.md");
pub(super) const PACKETS: &str = include_str!("prose/packets.md");
pub(super) const TARGETS: &str = include_str!("prose/targets.md");
pub(super) const BENCHMARKS: &str = include_str!("prose/benchmarks.md");

/// The placeholders of `template`, in order.
fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i..].find("}}") else { break };
        out.push(&rest[i + 2..i + j]);
        rest = &rest[i + j + 2..];
    }
    out
}

/// `template` with each `{{name}}` replaced by its value; a placeholder without a value, or a
/// value no placeholder takes, is an error (a section's text and code out of step).
pub(super) fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let wanted = placeholders(template);
    for w in &wanted {
        if !vars.iter().any(|(k, _)| k == w) {
            bail!("bench prose: no value for {{{{{w}}}}}");
        }
    }
    let mut out = template.to_string();
    for (k, v) in vars {
        if !wanted.contains(k) {
            bail!("bench prose: {k} is given but the template has no {{{{{k}}}}}");
        }
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder_and_refuses_a_mismatch() {
        let t = "a {{x}} b {{y}}\n";
        assert_eq!(render(t, &[("x", "1".into()), ("y", "2".into())]).unwrap(), "a 1 b 2\n");
        assert!(render(t, &[("x", "1".into())]).unwrap_err().to_string().contains("{{y}}"));
        assert!(render(t, &[("x", "1".into()), ("y", "2".into()), ("z", "3".into())]).is_err());
        for tpl in [
            OVERHEAD, ACCOUNTING, RECORDER, PEERS, LOSS, LATENCY, FOOTPRINT, SCALE, FILES, PACKETS, TARGETS, BENCHMARKS,
        ] {
            assert!(!placeholders(tpl).is_empty() && tpl.starts_with('#'), "{tpl}");
        }
    }
}
