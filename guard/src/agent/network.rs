//! The network events through their stages: a refused (or would-be refused) connect named by
//! the notebook's DNS answers, a packet or raw socket, a fan-out, a mining call on a flow
//! (whose process is ended under enforcement), each judged for the notebook it came from; and
//! what JupyterHub answered to a response.

use std::io::Write;

use super::Pipeline;
use crate::sensors::decode::{Egress, Fanout, Socket, Stratum};

impl<W: Write> Pipeline<W> {
    pub(super) fn on_egress(&mut self, mut g: Egress) {
        self.names.name(&mut g);
        if let Some(who) = self.who(g.meta.cgroup_id, g.meta.tgid) {
            self.table.ensure(&self.proc_root, g.meta.tgid);
            for a in self.detector.on_egress(&g, &self.table, &who) {
                self.respond(a);
            }
        }
    }

    pub(super) fn on_socket(&mut self, k: Socket) {
        if let Some(who) = self.who(k.meta.cgroup_id, k.meta.tgid) {
            self.table.ensure(&self.proc_root, k.meta.tgid);
            for a in self.detector.on_socket(&k, &self.table, &who) {
                self.respond(a);
            }
        }
    }

    pub(super) fn on_fanout(&mut self, f: Fanout) {
        if let Some(who) = self.who(f.meta.cgroup_id, f.meta.tgid) {
            self.table.ensure(&self.proc_root, f.meta.tgid);
            let name = self.names.lookup(f.subject, f.addr);
            for a in self.detector.on_fanout(&f, name, &self.table, &who) {
                self.respond(a);
            }
        }
    }

    pub(super) fn on_stratum(&mut self, m: Stratum) {
        let Some(who) = self.who(m.meta.cgroup_id, m.meta.tgid) else { return };
        self.table.ensure(&self.proc_root, m.meta.tgid);
        let name = self.names.lookup(m.subject, m.addr);
        // Under enforcement the call was dropped in the kernel; the process goes too, and its
        // flow with it.
        let (table, root) = (&self.table, &self.proc_root);
        let killed = m.dropped
            && crate::enforce::processes::end(root, m.meta.tgid, m.meta.cgroup_id, |p| table.cgroup_of(root, p));
        for a in self.detector.on_stratum(&m, name, killed, &self.table, &who) {
            self.respond(a);
        }
    }

    /// What the hub answered to a response: a `guard.response` alert.
    pub(super) fn answered(&mut self, done: crate::respond::hub::Outcome) {
        let (summary, fields) = done.fields();
        let a = self.detector.health_alert(&crate::policy::rules::HUB_RESPONSE, &summary, &fields);
        self.send(&a);
        self.flush();
    }
}
