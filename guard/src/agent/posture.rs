//! Posture in the pipeline: when a notebook's server or kernel starts (or is found running at
//! start-up), its posture facts are gathered, judged, and each finding is alerted once per
//! notebook.

use std::{ffi::OsString, io::Write, sync::Arc};

use super::Pipeline;
use crate::{
    detect::engine::posture::findings, discovery::attribution::Attribution, enrich::posture::gather,
    policy::root::Root, process::kernel::connection_file, process::table::Role,
};

impl<W: Write> Pipeline<W> {
    /// Server or kernel `pid` of notebook `who` started: its posture findings.
    pub(super) fn check_posture(&mut self, pid: u32, role: Role, argv: &[OsString], who: &Arc<Attribution>) {
        if !matches!(role, Role::Server | Role::Kernel) {
            return;
        }
        let Ok((_, root)) = Root::open(&self.proc_root.join(pid.to_string()).join("root")) else { return };
        let conn = if role == Role::Kernel { connection_file(argv) } else { None };
        let facts = gather(&self.proc_root, pid, &root, conn.as_deref());
        for f in findings(&facts) {
            if !self.posture.admit(who, &f) {
                continue;
            }
            let p = self.table.get(pid).cloned();
            if let Some(a) = self.detector.posture_alert(&f, who, p.as_ref()) {
                self.respond(a);
            }
        }
    }
}
