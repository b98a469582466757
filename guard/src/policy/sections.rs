//! The policy's sections as the file spells them: mode, discovery, the Python spec,
//! allowances, rules, overrides, mining. (Helpers and egress have files of their own.)

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use super::egress;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AutoBool {
    #[default]
    Auto,
    True,
    False,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Kubernetes {
    pub enabled: AutoBool,
    pub node_name: Option<String>,
    pub notebook_selector: String,
    pub notebook_container: String,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            enabled: AutoBool::Auto,
            node_name: None,
            notebook_selector: "component=singleuser-server".into(),
            notebook_container: "notebook".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    pub kubernetes: Kubernetes,
    pub tljh: bool,
    pub docker: bool,
    /// LocalProcessSpawner: servers whose environment has JUPYTERHUB_USER, in any watched cgroup.
    pub local_process: bool,
}

impl Default for Discovery {
    fn default() -> Self {
        Self { kubernetes: Kubernetes::default(), tljh: true, docker: true, local_process: true }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    pub interpreters: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Allowances {
    pub terminals: bool,
    pub pip_magic: bool,
}

impl Default for Allowances {
    fn default() -> Self {
        Self { terminals: false, pip_magic: true }
    }
}

/// Allowance overrides: only the keys given change.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowancesPatch {
    pub terminals: Option<bool>,
    pub pip_magic: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesSpec {
    #[serde(default)]
    pub disabled: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverrideMatch {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub users: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: OverrideMatch,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub allowances: AllowancesPatch,
    /// Replaces the global egress policy for these notebooks.
    #[serde(default)]
    pub egress: Option<egress::EgressSpec>,
    /// The seccomp profile (OCI JSON, absolute path) these notebooks are assigned: a syscall
    /// outside it raises `notebook.seccomp_drift`. Replaces the global one.
    #[serde(default)]
    pub seccomp_profile: Option<String>,
}

/// `notice:` — the line a notebook's kernel gets on its standard error (which ipykernel
/// forwards into the running cell) when something it started is refused.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NoticeSpec {
    pub enabled: bool,
    /// Whom to ask, as the line ends.
    pub contact: String,
}

impl Default for NoticeSpec {
    fn default() -> Self {
        Self { enabled: true, contact: "Ask your hub's administrators if you need it.".into() }
    }
}

/// `mining:` — crypto-mining detection beyond the built-in command-line shapes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MiningSpec {
    /// The operator's own patterns (case-insensitive substrings of a command line, one per
    /// line), e.g. a mounted Kubernetes Secret. Alerts name them by line number only.
    pub patterns_file: Option<String>,
}

/// `fan_out:` — a notebook process reaching more distinct destinations (address, port,
/// protocol) than `destinations` within `seconds` raises `notebook.fan_out` (0: off).
/// pip, conda and git reach a handful of hosts; a scan or a pool hunt, dozens.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FanOutSpec {
    pub destinations: u32,
    pub seconds: u32,
}

impl Default for FanOutSpec {
    fn default() -> Self {
        Self { destinations: 30, seconds: 10 }
    }
}
