//! The policy file: what counts as Python, which helpers are benign, which rules run, where
//! alerts go, and per-namespace / per-label overrides. One YAML file, an embedded default, and
//! strict parsing: unknown keys and bad values are errors naming file:line:column and the key.

pub mod check;
pub mod domains;
pub mod egress;
pub mod helpers;
pub mod identity;
pub mod kernelspecs;
pub mod locations;
pub mod mining;
pub mod outputs;
pub mod persistence;
pub mod provenance;
pub mod response;
pub mod root;
pub mod rules;
mod seccomp;
mod sections;
pub mod suggest;
pub mod watch;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use serde::Deserialize;

pub use self::{
    helpers::{ArgMatcher, Helper, HelperParent, Location, REST_ARGS},
    sections::*,
};
use crate::discovery::attribution::Attribution;

pub const DEFAULT_POLICY: &str = include_str!("default.yaml");

/// The file as written: every top-level key optional; what is missing comes from the
/// embedded default, section by section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    mode: Option<Mode>,
    discovery: Option<Discovery>,
    outputs: Option<Vec<String>>,
    python: Option<PythonSpec>,
    allowances: Option<Allowances>,
    helpers: Option<Vec<Helper>>,
    package_managers: Option<Vec<String>>,
    network_tools: Option<Vec<String>>,
    shells: Option<Vec<String>>,
    writable_paths: Option<Vec<String>>,
    loaders: Option<Vec<String>>,
    launchers: Option<Vec<String>>,
    kernel_commands: Option<Vec<Vec<String>>>,
    egress: Option<egress::EgressSpec>,
    heartbeat_seconds: Option<u64>,
    seccomp_profile: Option<String>,
    mining: Option<MiningSpec>,
    notice: Option<NoticeSpec>,
    persistence: Option<persistence::PersistenceSpec>,
    response: Option<response::ResponseSpec>,
    fan_out: Option<FanOutSpec>,
    rules: Option<RulesSpec>,
    overrides: Option<Vec<Override>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    pub discovery: Discovery,
    pub outputs: Vec<String>,
    pub python: PythonSpec,
    pub allowances: Allowances,
    pub helpers: Vec<Helper>,
    pub package_managers: BTreeSet<String>,
    pub network_tools: BTreeSet<String>,
    pub shells: BTreeSet<String>,
    pub writable_paths: Vec<String>,
    pub loaders: Vec<String>,
    pub launchers: BTreeSet<String>,
    /// Exact commands (argv) sanctioned kernels run through a shell at start-up.
    pub kernel_commands: Vec<Vec<String>>,
    pub egress: egress::EgressSpec,
    /// Interval of `guard.heartbeat` alerts (0: none).
    pub heartbeat_seconds: u64,
    /// The seccomp profile every notebook is assigned (overrides may replace it).
    pub seccomp_profile: Option<String>,
    /// The assigned profiles, read and checked when the policy is loaded, by path.
    pub seccomp_profiles: BTreeMap<String, crate::seccomp::oci::OciProfile>,
    pub mining: MiningSpec,
    /// The operator's mining patterns, read when the policy is loaded (never printed).
    pub mining_patterns: mining::OperatorPatterns,
    pub notice: NoticeSpec,
    pub persistence: persistence::PersistenceSpec,
    /// Answering through JupyterHub, and its token (read when the policy is loaded).
    pub response: response::ResponseSpec,
    pub hub_token: Option<response::HubToken>,
    pub fan_out: FanOutSpec,
    pub rules: RulesSpec,
    pub overrides: Vec<Override>,
}

/// A policy error: where (file, line, column, key) and what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}{}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), column.map(|c| format!(":{c}")).unwrap_or_default())]
pub struct PolicyError {
    pub origin: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
}

impl PolicyError {
    /// The policy file could not be read.
    pub fn unreadable(path: &Path, e: std::io::Error) -> Self {
        Self {
            origin: path.display().to_string(),
            line: None,
            column: None,
            key: "(file)".into(),
            message: e.to_string(),
        }
    }
}

/// What applies to one notebook after overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub mode: Mode,
    pub allowances: Allowances,
    /// Egress policy id: 1 the global one, 2 + i the one of override i.
    pub egress_policy: u32,
    /// Seccomp profile id: 0 none, 1 the global one, 2 + i the one of override i.
    pub seccomp_profile: u32,
}

fn parse_file(origin: &str, text: &str) -> Result<PolicyFile, PolicyError> {
    if text.trim().is_empty() {
        return Ok(PolicyFile::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, PolicyFile>(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let loc = inner.location();
        // serde_yaml_ng appends " at line L column C"; we print the location up front.
        let mut message = inner.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // …and prefixes its own path ("allowances: unknown field"); the key is printed anyway.
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.contains(' ') {
                message = rest.to_string();
            }
        }
        PolicyError {
            origin: origin.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            key: if key == "." { "(top level)".into() } else { key },
            message,
        }
    })
}

impl Policy {
    /// The embedded default.
    pub fn default_policy() -> Self {
        Self::from_str("(embedded default)", "").expect("the embedded default policy is valid")
    }

    pub fn from_path(path: &Path) -> Result<Self, PolicyError> {
        Self::from_read(path, std::fs::read_to_string(path))
    }

    /// Parses what was read from `path`, or says why it could not be read.
    pub fn from_read(path: &Path, text: std::io::Result<String>) -> Result<Self, PolicyError> {
        let origin = path.display().to_string();
        match text {
            Ok(text) => Self::from_str(&origin, &text),
            Err(e) => Err(PolicyError::unreadable(path, e)),
        }
    }

    /// Parses `text` over the embedded default and validates the result. Nothing is applied
    /// anywhere by this: callers swap in the returned policy only on success.
    pub fn from_str(origin: &str, text: &str) -> Result<Self, PolicyError> {
        let base = parse_file("(embedded default)", DEFAULT_POLICY)?;
        let user = parse_file(origin, text)?;
        let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
        let p = Policy {
            mode: user.mode.or(base.mode).unwrap_or_default(),
            discovery: user.discovery.or(base.discovery).unwrap_or_default(),
            outputs: user.outputs.or(base.outputs).unwrap_or_default(),
            python: user.python.or(base.python).unwrap_or_default(),
            allowances: user.allowances.or(base.allowances).unwrap_or_default(),
            helpers: user.helpers.or(base.helpers).unwrap_or_default(),
            package_managers: set(user.package_managers.or(base.package_managers).unwrap_or_default()),
            network_tools: set(user.network_tools.or(base.network_tools).unwrap_or_default()),
            shells: set(user.shells.or(base.shells).unwrap_or_default()),
            writable_paths: user.writable_paths.or(base.writable_paths).unwrap_or_default(),
            loaders: user.loaders.or(base.loaders).unwrap_or_default(),
            launchers: set(user.launchers.or(base.launchers).unwrap_or_default()),
            kernel_commands: user.kernel_commands.or(base.kernel_commands).unwrap_or_default(),
            egress: user.egress.or(base.egress).unwrap_or_default(),
            heartbeat_seconds: user.heartbeat_seconds.or(base.heartbeat_seconds).unwrap_or(60),
            seccomp_profile: user.seccomp_profile.or(base.seccomp_profile),
            seccomp_profiles: BTreeMap::new(),
            mining: user.mining.or(base.mining).unwrap_or_default(),
            mining_patterns: Default::default(),
            notice: user.notice.or(base.notice).unwrap_or_default(),
            persistence: user.persistence.or(base.persistence).unwrap_or_default(),
            response: user.response.or(base.response).unwrap_or_default(),
            hub_token: None,
            fan_out: user.fan_out.or(base.fan_out).unwrap_or_default(),
            rules: user.rules.or(base.rules).unwrap_or_default(),
            overrides: user.overrides.or(base.overrides).unwrap_or_default(),
        };
        let mut p = p;
        p.validate(origin, text)?;
        p.seccomp_profiles = p.load_seccomp_profiles(origin, text)?;
        if let Some(f) = &p.mining.patterns_file {
            p.mining_patterns = mining::OperatorPatterns::load(Path::new(f)).map_err(|message| {
                let line = text.lines().position(|l| l.contains("patterns_file")).map(|i| i + 1);
                PolicyError {
                    origin: origin.to_string(),
                    line,
                    column: None,
                    key: "mining.patterns_file".into(),
                    message,
                }
            })?;
        }
        p.hub_token = response::token(&p.response, origin, text)?;
        Ok(p)
    }

    fn validate(&self, origin: &str, text: &str) -> Result<(), PolicyError> {
        let err = |key: String, needle: &str, message: String| {
            // Semantic errors have no parser location: point at the first line naming the value.
            let line =
                (!needle.is_empty()).then(|| text.lines().position(|l| l.contains(needle)).map(|i| i + 1)).flatten();
            PolicyError { origin: origin.to_string(), line, column: None, key, message }
        };
        if self.python.interpreters.is_empty() {
            return Err(err(
                "python.interpreters".into(),
                "interpreters",
                "at least one interpreter path is needed".into(),
            ));
        }
        let globs = self
            .python
            .interpreters
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("python.interpreters[{i}]"), g))
            .chain(self.loaders.iter().enumerate().map(|(i, g)| (format!("loaders[{i}]"), g)));
        for (key, g) in globs {
            if !g.starts_with('/') {
                return Err(err(key, g, format!("{g:?} is not an absolute path")));
            }
            globset::Glob::new(g).map_err(|e| err(key, g, format!("bad glob {g:?}: {e}")))?;
        }
        let mut names = BTreeSet::new();
        for (i, h) in self.helpers.iter().enumerate() {
            if !names.insert(&h.name) {
                return Err(err(format!("helpers[{i}].name"), &h.name, format!("duplicate helper name {:?}", h.name)));
            }
            helpers::validate(i, h).map_err(|(key, needle, message)| err(key, &needle, message))?;
        }
        for (i, c) in self.kernel_commands.iter().enumerate() {
            let shown = c.last().map(String::as_str).unwrap_or("kernel_commands");
            kernelspecs::check_command(c).map_err(|m| err(format!("kernel_commands[{i}]"), shown, m))?;
        }
        for (i, r) in self.rules.disabled.iter().enumerate() {
            if !rules::is_rule(r) {
                return Err(err(
                    format!("rules.disabled[{i}]"),
                    r,
                    format!("unknown rule {r:?} (known: {})", rules::rule_names().join(", ")),
                ));
            }
            if r.starts_with("guard.") {
                return Err(err(
                    format!("rules.disabled[{i}]"),
                    r,
                    format!(
                        "{r:?} is the agent's own health alert and always goes out (the heartbeat's interval is heartbeat_seconds; 0 stops it)"
                    ),
                ));
            }
        }
        for (i, w) in self.writable_paths.iter().enumerate() {
            if !w.starts_with('/') {
                return Err(err(format!("writable_paths[{i}]"), w, format!("{w:?} is not an absolute path")));
            }
        }
        for (i, o) in self.overrides.iter().enumerate() {
            let m = &o.matches;
            if m.namespaces.is_empty() && m.labels.is_empty() && m.users.is_empty() {
                return Err(err(format!("overrides[{i}].match"), &o.name, "an override must match something".into()));
            }
        }
        crate::discovery::kube::parse_selector(&self.discovery.kubernetes.notebook_selector).map_err(|e| {
            err("discovery.kubernetes.notebook_selector".into(), &self.discovery.kubernetes.notebook_selector, e)
        })?;
        persistence::validate(&self.persistence).map_err(|(key, needle, message)| err(key, &needle, message))?;
        let egress = std::iter::once(("egress".to_string(), &self.egress)).chain(
            self.overrides
                .iter()
                .enumerate()
                .filter_map(|(i, o)| Some((format!("overrides[{i}].egress"), o.egress.as_ref()?))),
        );
        if self.fan_out.destinations > 0 && self.fan_out.seconds == 0 {
            return Err(err("fan_out.seconds".into(), "fan_out", "a window of 0 seconds counts nothing".into()));
        }
        if let Some((key, needle, message)) = response::problems(&self.response, rules::is_rule) {
            return Err(err(format!("response.{key}"), &needle, message));
        }
        for (at, spec) in egress {
            if let Some((key, needle, message)) = spec.problems().into_iter().next() {
                return Err(err(format!("{at}.{key}"), &needle, message));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            outputs::OutputSpec::parse(o).map_err(|e| err(format!("outputs[{i}]"), o, e.to_string()))?;
        }
        Ok(())
    }

    /// Mode and allowances for one notebook: the first matching override, then `mode_flag`
    /// (the command line's `--mode`) over everything.
    pub fn effective(&self, who: Option<&Attribution>, mode_flag: Option<Mode>) -> Effective {
        let mut eff = Effective {
            mode: self.mode,
            allowances: self.allowances,
            egress_policy: 1,
            seccomp_profile: self.seccomp_profile.is_some() as u32,
        };
        if let Some(a) = who {
            if let Some((i, o)) = self.overrides.iter().enumerate().find(|(_, o)| override_matches(&o.matches, a)) {
                if o.egress.is_some() {
                    eff.egress_policy = 2 + i as u32;
                }
                if o.seccomp_profile.is_some() {
                    eff.seccomp_profile = 2 + i as u32;
                }
                if let Some(m) = o.mode {
                    eff.mode = m;
                }
                if let Some(t) = o.allowances.terminals {
                    eff.allowances.terminals = t;
                }
                if let Some(p) = o.allowances.pip_magic {
                    eff.allowances.pip_magic = p;
                }
            }
        }
        if let Some(m) = mode_flag {
            eff.mode = m;
        }
        eff
    }

    /// Every egress policy with its id (see `Effective::egress_policy`).
    pub fn egress_policies(&self) -> Vec<(u32, &egress::EgressSpec)> {
        let mut v = vec![(1, &self.egress)];
        for (i, o) in self.overrides.iter().enumerate() {
            if let Some(e) = &o.egress {
                v.push((2 + i as u32, e));
            }
        }
        v
    }

    /// The most permissive mode any notebook can get: decides whether enforcement is loaded.
    pub fn any_enforce(&self, mode_flag: Option<Mode>) -> bool {
        match mode_flag {
            Some(m) => m == Mode::Enforce,
            None => self.mode == Mode::Enforce || self.overrides.iter().any(|o| o.mode == Some(Mode::Enforce)),
        }
    }
}

fn override_matches(m: &OverrideMatch, a: &Attribution) -> bool {
    (m.namespaces.is_empty() || a.namespace.as_ref().is_some_and(|n| m.namespaces.contains(n)))
        && m.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v))
        && (m.users.is_empty() || a.user.as_ref().is_some_and(|u| m.users.contains(u)))
}

#[cfg(test)]
mod tests;
