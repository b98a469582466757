//! Posture findings: what a notebook's server or kernel exposes by how it was started —
//! kernel messages in clear text on the network, a readable connection file, root, a
//! service-account token, no seccomp filter, privileges it can still gain. Each comes with
//! its fix, at Notice, once per notebook (again when it changes).

use std::collections::{HashMap, HashSet};

use super::Detector;
use crate::{
    detect::alert::{Action, Alert},
    discovery::attribution::Attribution,
    enrich::posture::PostureFacts,
    policy::rules::{self, Rule},
    process::table::{cmdline, ProcInfo},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    /// What the finding is about, as it would change (an address, a uid): a finding is said
    /// again for a notebook only with another subject.
    pub subject: String,
    pub detail: String,
    pub fix: &'static str,
}

fn loopback(ip: &str) -> bool {
    ip == "localhost" || ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// What the facts show.
pub fn findings(f: &PostureFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |rule: Rule, subject: String, detail: String, fix: &'static str| {
        out.push(Finding { rule, subject, detail, fix })
    };
    if let Some(c) = &f.connection {
        if c.transport == "tcp" && !c.ip.is_empty() && !loopback(&c.ip) {
            add(
                rules::POSTURE_KERNEL_TCP,
                format!("tcp://{}", c.ip),
                format!("kernel listens on tcp://{} ({})", c.ip, c.path.display()),
                "start kernels with the ipc transport (c.KernelManager.transport = 'ipc'), or on 127.0.0.1",
            );
        }
        if c.mode & 0o077 != 0 {
            add(
                rules::POSTURE_CONNECTION_FILE,
                format!("{:o}", c.mode),
                format!("connection file {} has mode {:o} (its key signs kernel messages)", c.path.display(), c.mode),
                "keep connection files 0600 (jupyter_client writes them so): check who changed it",
            );
        }
    }
    if f.uid == Some(0) {
        add(
            rules::POSTURE_ROOT,
            "uid 0".into(),
            "notebook runs as uid 0".into(),
            "run notebooks as an unprivileged user (Z2JH: singleuser.uid 1000; runAsNonRoot)",
        );
    }
    if let Some(t) = &f.token {
        add(
            rules::POSTURE_TOKEN,
            t.display().to_string(),
            format!("service-account token at {}", t.display()),
            "automountServiceAccountToken: false for notebook pods (Z2JH does so unless singleuser.serviceAccountName is set)",
        );
    }
    if f.seccomp == Some(0) {
        add(
            rules::POSTURE_NO_SECCOMP,
            "Seccomp: 0".into(),
            "notebook runs without a seccomp filter".into(),
            "set seccompProfile: RuntimeDefault (singleuser.extraPodConfig.securityContext), or a profile from `guard seccomp generate`",
        );
    }
    if f.no_new_privs == Some(false) {
        add(
            rules::POSTURE_NO_NEW_PRIVS,
            "NoNewPrivs: 0".into(),
            "notebook can gain privileges through setuid programs (NoNewPrivs unset)".into(),
            "set allowPrivilegeEscalation: false in the notebook container's securityContext",
        );
    }
    out
}

/// Which findings each notebook was told about.
#[derive(Default)]
pub struct PostureBook {
    seen: HashMap<String, HashSet<(&'static str, String)>>,
}

/// A notebook, as posture findings are kept for it: its cgroup (which incarnation), user and
/// server (servers of LocalProcessSpawner share a cgroup).
fn notebook_key(who: &Attribution) -> String {
    format!("{}\0{}\0{:?}\0{:?}", who.cgroup_id, who.cgroup.display(), who.user, who.server)
}

impl PostureBook {
    /// True the first time notebook `who` has finding `f` with its subject.
    pub fn admit(&mut self, who: &Attribution, f: &Finding) -> bool {
        self.seen.entry(notebook_key(who)).or_default().insert((f.rule.name, f.subject.clone()))
    }

    /// The notebook's cgroup is gone: the next incarnation is told again.
    pub fn forget(&mut self, cgroup_id: u64) {
        let prefix = format!("{cgroup_id}\0");
        self.seen.retain(|k, _| !k.starts_with(&prefix));
    }
}

impl Detector {
    /// The alert of one finding, about process `p` of notebook `who`.
    pub fn posture_alert(&self, f: &Finding, who: &Attribution, p: Option<&ProcInfo>) -> Option<Alert> {
        if !self.enabled(&f.rule) {
            return None;
        }
        let now = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
        let mut a = Alert::new(&f.rule, now, &self.hostname, Action::Alert);
        a.set("evt.type", "posture")
            .set("posture.detail", f.detail.clone())
            .set("posture.fix", f.fix)
            .set_opt("proc.pid", p.map(|p| p.pid))
            .set_opt("proc.exepath", p.and_then(|p| p.exe.as_ref()).map(|e| e.to_string_lossy().into_owned()))
            .set_opt("proc.cmdline", p.map(|p| self.redactor.text(&cmdline(&p.argv)).into_owned()));
        a.notebook_fields(who, p.and_then(|p| p.kernel.as_deref()));
        a.finish_output(&format!("{} ({}; fix: {})", f.rule.summary, f.detail, f.fix));
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::posture::Connection;

    #[test]
    fn each_exposure_is_a_finding_and_a_clean_notebook_has_none() {
        let clean = PostureFacts {
            pid: 1,
            uid: Some(1000),
            seccomp: Some(2),
            no_new_privs: Some(true),
            token: None,
            connection: Some(Connection {
                path: "/r/k.json".into(),
                transport: "tcp".into(),
                ip: "127.0.0.1".into(),
                mode: 0o600,
            }),
        };
        assert!(findings(&clean).is_empty());
        let ipc = PostureFacts {
            connection: Some(Connection {
                path: "/r/k.json".into(),
                transport: "ipc".into(),
                ip: "kernel".into(),
                mode: 0o600,
            }),
            ..clean.clone()
        };
        assert!(findings(&ipc).is_empty(), "the ipc transport's `ip` is a path prefix");
        let bad = PostureFacts {
            pid: 1,
            uid: Some(0),
            seccomp: Some(0),
            no_new_privs: Some(false),
            token: Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into()),
            connection: Some(Connection {
                path: "/r/k.json".into(),
                transport: "tcp".into(),
                ip: "0.0.0.0".into(),
                mode: 0o644,
            }),
        };
        let names: Vec<&str> = findings(&bad).iter().map(|f| f.rule.name).collect();
        assert_eq!(
            names,
            [
                "posture.kernel_tcp_transport",
                "posture.connection_file_readable",
                "posture.root_notebook",
                "posture.service_account_token",
                "posture.no_seccomp",
                "posture.no_new_privs"
            ]
        );
        let mut who = Attribution::new(crate::discovery::attribution::Source::Tljh, "/sys/fs/cgroup/a".into());
        who.cgroup_id = 42;
        let mut book = PostureBook::default();
        let f = &findings(&bad)[0];
        assert!(book.admit(&who, f) && !book.admit(&who, f), "once per notebook");
        book.forget(42);
        assert!(book.admit(&who, f), "a notebook made again is told again");
    }
}
