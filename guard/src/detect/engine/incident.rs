//! Incidents: what a flagged shell runs afterwards is part of the same incident.

use crate::{detect::alert::Alert, policy::rules, process::table::ProcessTable};

/// One incident, one alert: a shell-out flagged as a non-Python exec starts an incident (its
/// kernel time is the id, in `guard.incident`); what that process and its descendants run
/// afterwards that is flagged only as the same is folded into it (the aggregator reports the
/// chain once, as a follow-up), while anything more specific still goes out, with the
/// incident's id. Enforcement is untouched: it is decided in the kernel.
pub(super) fn incident(alerts: &mut [Alert], table: &mut ProcessTable, tgid: u32, ktime_ns: u64) {
    if alerts.is_empty() {
        return;
    }
    let generic = alerts.iter().all(|a| a.rule == rules::NON_PYTHON_EXEC.name);
    let Some(p) = table.get_mut(tgid) else { return };
    let id = match p.incident {
        Some(id) => {
            for a in alerts.iter_mut() {
                a.folded = generic;
            }
            id
        }
        None if generic => {
            p.incident = Some(ktime_ns);
            ktime_ns
        }
        None => return,
    };
    for a in alerts.iter_mut() {
        a.set("guard.incident", id);
    }
}
