//! The rules: stable names (other tools and tests rely on them), priorities, tags with MITRE
//! ATT&CK ids, and the sentence each alert's output starts with.

use serde::Serialize;

/// Falco's priorities, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub priority: Priority,
    pub tags: &'static [&'static str],
    pub summary: &'static str,
}

pub const NON_PYTHON_EXEC: Rule = Rule {
    name: "notebook.non_python_exec",
    priority: Priority::Warning,
    tags: &["notebook", "process", "shell_bypass", "mitre_execution", "T1059"],
    summary: "Non-Python program executed from a notebook",
};
pub const TERMINAL_SHELL: Rule = Rule {
    name: "notebook.terminal_shell",
    priority: Priority::Notice,
    tags: &["notebook", "terminal", "shell_bypass", "mitre_execution", "T1059.004"],
    summary: "Shell started by the notebook server (Jupyter terminal)",
};
pub const WRITABLE_PATH: Rule = Rule {
    name: "notebook.exec_from_writable_path",
    priority: Priority::Error,
    tags: &["notebook", "process", "drift", "mitre_execution", "T1204.002", "T1105"],
    summary: "Binary executed from a user-writable location",
};
pub const FILELESS: Rule = Rule {
    name: "notebook.fileless_exec",
    priority: Priority::Critical,
    tags: &["notebook", "process", "fileless", "mitre_defense_evasion", "T1620"],
    summary: "Fileless execution (memfd, deleted file or /proc fd)",
};
pub const LOADER: Rule = Rule {
    name: "notebook.loader_invocation",
    priority: Priority::Error,
    tags: &["notebook", "process", "mitre_defense_evasion", "T1218"],
    summary: "Program run through the dynamic loader",
};
pub const MASQUERADE: Rule = Rule {
    name: "notebook.masqueraded_binary",
    priority: Priority::Error,
    tags: &["notebook", "process", "mitre_defense_evasion", "T1036.003"],
    summary: "Renamed, copied or linked system binary executed",
};
pub const PACKAGE_MANAGER: Rule = Rule {
    name: "notebook.package_manager",
    priority: Priority::Warning,
    tags: &["notebook", "process", "software_mgmt", "mitre_persistence", "TA0003"],
    summary: "Package manager executed from a notebook",
};
pub const NETWORK_TOOL: Rule = Rule {
    name: "notebook.network_tool",
    priority: Priority::Warning,
    tags: &["notebook", "process", "network", "mitre_command_and_control", "T1105"],
    summary: "Network tool executed from a notebook",
};
pub const CRYPTO_MINING: Rule = Rule {
    name: "notebook.crypto_mining",
    priority: Priority::Critical,
    tags: &["notebook", "process", "crypto_mining", "mitre_impact", "T1496"],
    summary: "Crypto miner started from a notebook",
};
pub const PERSISTENCE: Rule = Rule {
    name: "notebook.persistence",
    priority: Priority::Error,
    tags: &["notebook", "filesystem", "persistence", "mitre_persistence", "T1546"],
    summary: "Persistence location written in a notebook",
};
pub const PERSISTENCE_KNOWN_WRITER: Rule = Rule {
    name: "notebook.persistence_known_writer",
    priority: Priority::Informational,
    tags: &["notebook", "filesystem", "persistence", "mitre_persistence", "T1546"],
    summary: "Persistence location written by a known tool",
};
pub const DRIFT_EXEC: Rule = Rule {
    name: "notebook.drift_exec",
    priority: Priority::Error,
    tags: &["notebook", "process", "drift", "mitre_execution", "T1105", "T1204.002"],
    summary: "File made executable in the session by a notebook process, then run",
};
pub const DRIFT_EXEC_INSTALLED: Rule = Rule {
    name: "notebook.drift_exec_installed",
    priority: Priority::Informational,
    tags: &["notebook", "process", "drift", "software_mgmt", "T1105"],
    summary: "File installed in the session by a package manager, then run",
};
pub const POSTURE_KERNEL_TCP: Rule = Rule {
    name: "posture.kernel_tcp_transport",
    priority: Priority::Notice,
    tags: &["notebook", "posture", "network", "T1040"],
    summary: "Kernel messages travel in clear text on the network (TCP transport on a non-loopback address)",
};
pub const POSTURE_CONNECTION_FILE: Rule = Rule {
    name: "posture.connection_file_readable",
    priority: Priority::Notice,
    tags: &["notebook", "posture", "credentials", "T1552.001"],
    summary: "Kernel connection file readable by other users",
};
pub const POSTURE_ROOT: Rule = Rule {
    name: "posture.root_notebook",
    priority: Priority::Notice,
    tags: &["notebook", "posture", "privilege", "T1611"],
    summary: "Notebook runs as root",
};
pub const POSTURE_TOKEN: Rule = Rule {
    name: "posture.service_account_token",
    priority: Priority::Notice,
    tags: &["notebook", "posture", "credentials", "T1528"],
    summary: "Kubernetes service-account token mounted into a notebook",
};
pub const POSTURE_NO_SECCOMP: Rule = Rule {
    name: "posture.no_seccomp",
    priority: Priority::Notice,
    tags: &["notebook", "posture", "T1611"],
    summary: "Notebook runs without a seccomp filter",
};
pub const POSTURE_NO_NEW_PRIVS: Rule = Rule {
    name: "posture.no_new_privs",
    priority: Priority::Notice,
    tags: &["notebook", "posture", "privilege", "T1548.001"],
    summary: "Notebook can gain privileges (NoNewPrivs unset)",
};
pub const REVERSE_SHELL: Rule = Rule {
    name: "notebook.reverse_shell",
    priority: Priority::Critical,
    tags: &["notebook", "process", "network", "mitre_execution", "T1059.004", "mitre_command_and_control", "T1071"],
    summary: "Shell with a network socket on stdin/stdout/stderr (reverse shell)",
};
pub const UNKNOWN_LINEAGE: Rule = Rule {
    name: "notebook.unknown_lineage",
    priority: Priority::Warning,
    tags: &["notebook", "process", "mitre_execution", "T1059"],
    summary: "Process executed in a notebook container with unknown lineage",
};
pub const UNEXPECTED_EGRESS: Rule = Rule {
    name: "notebook.unexpected_egress",
    priority: Priority::Warning,
    tags: &["notebook", "network", "egress", "mitre_exfiltration", "T1041", "mitre_command_and_control", "T1071"],
    summary: "Notebook connection to a destination its egress policy does not allow",
};
pub const FAN_OUT: Rule = Rule {
    name: "notebook.fan_out",
    priority: Priority::Warning,
    tags: &["notebook", "network", "mitre_discovery", "T1046"],
    summary: "Notebook process reached many distinct destinations in a short time (a scan)",
};
pub const METADATA_ACCESS: Rule = Rule {
    name: "notebook.cloud_metadata_access",
    priority: Priority::Critical,
    tags: &["notebook", "network", "egress", "mitre_credential_access", "T1552.005"],
    summary: "Notebook connection to a cloud metadata endpoint",
};
pub const PACKET_SOCKET: Rule = Rule {
    name: "notebook.packet_socket",
    priority: Priority::Error,
    tags: &["notebook", "network", "sniffing", "mitre_credential_access", "T1040"],
    summary: "Packet or raw socket opened in a notebook (sniffing)",
};
pub const ICMP_SOCKET: Rule = Rule {
    name: "notebook.icmp_socket",
    priority: Priority::Warning,
    tags: &["notebook", "network", "egress", "mitre_exfiltration", "T1048", "mitre_command_and_control", "T1095"],
    summary: "ICMP socket opened in a notebook (egress its policy cannot judge)",
};
pub const SECCOMP_DRIFT: Rule = Rule {
    name: "notebook.seccomp_drift",
    priority: Priority::Warning,
    tags: &["notebook", "seccomp", "drift", "mitre_execution", "T1106"],
    summary: "Notebook made a syscall outside its assigned seccomp profile",
};
/// Agent health: events were lost between the kernel and the agent.
pub const EVENTS_LOST: Rule = Rule {
    name: "guard.events_lost",
    priority: Priority::Warning,
    tags: &["guard", "health"],
    summary: "notebook-guard lost events",
};

/// Agent lifecycle and liveness, so a SIEM can notice a silent node.
pub const GUARD_STARTED: Rule = Rule {
    name: "guard.started",
    priority: Priority::Informational,
    tags: &["guard", "health"],
    summary: "notebook-guard started",
};
pub const GUARD_STOPPED: Rule = Rule {
    name: "guard.stopped",
    priority: Priority::Notice,
    tags: &["guard", "health"],
    summary: "notebook-guard stopped",
};
pub const GUARD_HEARTBEAT: Rule = Rule {
    name: "guard.heartbeat",
    priority: Priority::Informational,
    tags: &["guard", "health"],
    summary: "notebook-guard heartbeat",
};

pub const POLICY_RELOADED: Rule = Rule {
    name: "guard.policy_reloaded",
    priority: Priority::Notice,
    tags: &["guard", "policy"],
    summary: "notebook-guard policy reloaded",
};
pub const POLICY_REJECTED: Rule = Rule {
    name: "guard.policy_rejected",
    priority: Priority::Error,
    tags: &["guard", "policy"],
    summary: "notebook-guard rejected a new policy; the previous one stays in force",
};

pub const GUARD_TAMPERED: Rule = Rule {
    name: "guard.tampered",
    priority: Priority::Critical,
    tags: &["guard", "tamper", "mitre_defense_evasion", "T1562.001"],
    summary: "notebook-guard's kernel programs were detached by someone else",
};

/// Agent health: handling one event failed (a full kernel map, an unwritable feed). The agent
/// went on; what that event should have changed may be missing.
pub const GUARD_ERROR: Rule = Rule {
    name: "guard.error",
    priority: Priority::Error,
    tags: &["guard", "health"],
    summary: "notebook-guard failed to handle an event",
};

/// What the hub was asked in answer to an alert (policy `response`), and what it answered.
pub const HUB_RESPONSE: Rule = Rule {
    name: "guard.response",
    priority: Priority::Notice,
    tags: &["guard", "response", "jupyterhub"],
    summary: "notebook-guard asked JupyterHub to act on a notebook",
};

pub const ALL: &[Rule] = &[
    NON_PYTHON_EXEC,
    CRYPTO_MINING,
    TERMINAL_SHELL,
    WRITABLE_PATH,
    FILELESS,
    LOADER,
    MASQUERADE,
    PACKAGE_MANAGER,
    NETWORK_TOOL,
    REVERSE_SHELL,
    PERSISTENCE,
    PERSISTENCE_KNOWN_WRITER,
    DRIFT_EXEC,
    DRIFT_EXEC_INSTALLED,
    POSTURE_KERNEL_TCP,
    POSTURE_CONNECTION_FILE,
    POSTURE_ROOT,
    POSTURE_TOKEN,
    POSTURE_NO_SECCOMP,
    POSTURE_NO_NEW_PRIVS,
    UNKNOWN_LINEAGE,
    UNEXPECTED_EGRESS,
    FAN_OUT,
    METADATA_ACCESS,
    PACKET_SOCKET,
    ICMP_SOCKET,
    SECCOMP_DRIFT,
    EVENTS_LOST,
    GUARD_STARTED,
    GUARD_STOPPED,
    GUARD_HEARTBEAT,
    POLICY_RELOADED,
    POLICY_REJECTED,
    GUARD_TAMPERED,
    GUARD_ERROR,
    HUB_RESPONSE,
];

/// Is `name` one of the rules (what a policy may disable)?
pub fn is_rule(name: &str) -> bool {
    ALL.iter().any(|r| r.name == name)
}

/// Every rule name, for error messages.
pub fn rule_names() -> Vec<&'static str> {
    ALL.iter().map(|r| r.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_listed() {
        let names = rule_names();
        assert!(is_rule("notebook.fileless_exec") && !is_rule("notebook.nope"));
        let set: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
        for r in ALL.iter().filter(|r| r.name.starts_with("notebook.")) {
            assert!(r.tags.iter().any(|t| t.starts_with('T')), "{} has a MITRE id", r.name);
        }
    }
}
