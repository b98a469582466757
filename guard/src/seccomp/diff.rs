//! `guard seccomp diff A B`: what a profile change allows or refuses, for review.

use std::collections::BTreeMap;

use super::oci::{OciProfile, OciRule, ACT_ALLOW};

/// How one syscall is treated: its action (with errno) and argument conditions.
fn treatment(p: &OciProfile) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &p.syscalls {
        for n in &r.names {
            m.entry(n.clone()).or_default().push(describe(r));
        }
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

fn describe(r: &OciRule) -> String {
    let mut s = match (r.action.as_str(), r.errno_ret) {
        (a, Some(e)) => format!("{a}({e})"),
        (a, None) => a.to_string(),
    };
    for a in &r.args {
        s.push_str(&format!(" [arg{} {} {:#x}", a.index, a.op, a.value));
        if a.value_two != 0 {
            s.push_str(&format!(" {:#x}", a.value_two));
        }
        s.push(']');
    }
    s
}

/// Lines of a review: `+ name` newly allowed, `- name` no longer allowed, `~ name` changed,
/// and changes to the default action or architectures.
pub fn diff(a: &OciProfile, b: &OciProfile) -> Vec<String> {
    let mut out = Vec::new();
    let def = |p: &OciProfile| match p.default_errno_ret {
        Some(e) => format!("{}({e})", p.default_action),
        None => p.default_action.clone(),
    };
    if def(a) != def(b) {
        out.push(format!("~ defaultAction: {} -> {}", def(a), def(b)));
    }
    if a.architectures != b.architectures {
        out.push(format!("~ architectures: {:?} -> {:?}", a.architectures, b.architectures));
    }
    let (ta, tb) = (treatment(a), treatment(b));
    let allowed = |t: &Vec<String>| t.iter().any(|d| d.starts_with(ACT_ALLOW));
    let names: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for n in names {
        match (ta.get(n), tb.get(n)) {
            (None, Some(t)) if allowed(t) => out.push(format!("+ {n}: {}", t.join(", "))),
            (Some(t), None) if allowed(t) => out.push(format!("- {n}: was {}", t.join(", "))),
            (None, Some(t)) => out.push(format!("~ {n}: default -> {}", t.join(", "))),
            (Some(t), None) => out.push(format!("~ {n}: {} -> default", t.join(", "))),
            (Some(x), Some(y)) if x != y => {
                let sign = match (allowed(x), allowed(y)) {
                    (false, true) => '+',
                    (true, false) => '-',
                    _ => '~',
                };
                out.push(format!("{sign} {n}: {} -> {}", x.join(", "), y.join(", ")))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::oci::OciRule;
    use super::*;

    fn p(rules: Vec<OciRule>) -> OciProfile {
        OciProfile::with_rules(1, rules)
    }

    #[test]
    fn names_added_removed_and_changed() {
        let a =
            p(vec![OciRule::allow(vec!["read".into(), "ptrace".into()]), OciRule::errno(vec!["clone3".into()], 38)]);
        let b = p(vec![OciRule::allow(vec!["read".into(), "write".into(), "clone3".into()])]);
        let d = diff(&a, &b);
        assert!(d.contains(&"+ write: SCMP_ACT_ALLOW".to_string()), "{d:?}");
        assert!(d.contains(&"- ptrace: was SCMP_ACT_ALLOW".to_string()), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("+ clone3: SCMP_ACT_ERRNO(38) -> SCMP_ACT_ALLOW")), "{d:?}");
        assert!(!d.iter().any(|l| l.contains("read")), "{d:?}");
        assert!(diff(&a, &a).is_empty());
    }
}
