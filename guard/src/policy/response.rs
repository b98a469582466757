//! Answering through JupyterHub (policy `response`): for chosen rules, stop the user's server
//! through the hub's REST API, and optionally put the user in a group the hub's configuration
//! refuses. The token comes from a file (a Kubernetes Secret) and is never printed.

use std::{fmt, path::Path};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseSpec {
    /// The hub's REST API, e.g. `http://hub:8081/hub/api` (None: no response).
    pub hub_api_url: Option<String>,
    /// A file holding a token with the `admin:servers` scope (and `admin:groups` for
    /// `block_group`).
    pub token_file: Option<String>,
    /// Rules whose alerts are answered.
    pub rules: Vec<String>,
    /// Stop the server the alert names (the user's default or named server).
    pub stop_server: bool,
    /// Add the user to this hub group (your authenticator or hooks refuse its members).
    pub block_group: Option<String>,
    /// At most one answer per server in this many seconds.
    pub min_interval_seconds: u64,
}

impl Default for ResponseSpec {
    fn default() -> Self {
        Self {
            hub_api_url: None,
            token_file: None,
            rules: vec!["notebook.crypto_mining".into()],
            stop_server: true,
            block_group: None,
            min_interval_seconds: 300,
        }
    }
}

/// The hub token, read with the policy. Debug and Display never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HubToken(String);

impl fmt::Debug for HubToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HubToken(not shown)")
    }
}

impl HubToken {
    /// The file's first line; an error names the file, never its content.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(format!("{} holds no token", path.display()));
        }
        Ok(Self(token))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }
}

/// The token, read when the response is on; an error names the key and the file's line.
pub fn token(s: &ResponseSpec, origin: &str, text: &str) -> Result<Option<HubToken>, super::PolicyError> {
    let (Some(_), Some(f)) = (&s.hub_api_url, &s.token_file) else { return Ok(None) };
    HubToken::load(Path::new(f)).map(Some).map_err(|message| super::PolicyError {
        origin: origin.to_string(),
        line: text.lines().position(|l| l.contains("token_file")).map(|i| i + 1),
        column: None,
        key: "response.token_file".into(),
        message,
    })
}

/// What the policy file cannot mean: (key below `response`, value to point at, message).
pub fn problems(s: &ResponseSpec, is_rule: impl Fn(&str) -> bool) -> Option<(String, String, String)> {
    let url = s.hub_api_url.as_deref()?;
    let uri: Result<hyper::Uri, _> = url.parse();
    match uri {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
        _ => {
            return Some(("hub_api_url".into(), url.into(), format!("{url:?} is not an http(s) URL with a host")));
        }
    }
    if s.token_file.is_none() {
        return Some(("token_file".into(), "hub_api_url".into(), "the hub's API needs a token file".into()));
    }
    if !s.stop_server && s.block_group.is_none() {
        return Some((
            "stop_server".into(),
            "stop_server".into(),
            "nothing to ask the hub: stop_server is false and no block_group".into(),
        ));
    }
    if s.rules.is_empty() {
        return Some(("rules".into(), "response".into(), "no rule is answered".into()));
    }
    for (i, r) in s.rules.iter().enumerate() {
        if !is_rule(r) || r.starts_with("guard.") {
            return Some((format!("rules[{i}]"), r.clone(), format!("{r:?} is not a notebook rule")));
        }
    }
    if let Some(g) = &s.block_group {
        if g.is_empty() || g.contains('/') {
            return Some(("block_group".into(), g.clone(), format!("{g:?} is not a group name")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_needs_a_url_a_token_and_something_to_ask() {
        let spec = |yaml: &str| serde_yaml_ng::from_str::<ResponseSpec>(yaml).unwrap();
        let known = |r: &str| r.starts_with("notebook.");
        assert_eq!(problems(&spec(""), known), None, "off by default");
        let ok = spec("hub_api_url: http://hub:8081/hub/api\ntoken_file: /t\n");
        assert_eq!(problems(&ok, known), None);
        let key = |yaml: &str| problems(&spec(yaml), known).map(|p| p.0);
        assert_eq!(key("hub_api_url: hub:8081\ntoken_file: /t\n").as_deref(), Some("hub_api_url"));
        assert_eq!(key("hub_api_url: http://hub/hub/api\n").as_deref(), Some("token_file"));
        assert_eq!(key("hub_api_url: http://h/\ntoken_file: /t\nrules: [nope]\n").as_deref(), Some("rules[0]"));
        assert_eq!(key("hub_api_url: http://h/\ntoken_file: /t\nstop_server: false\n").as_deref(), Some("stop_server"));
        let dir = std::env::temp_dir().join(format!("guard-token-{}", std::process::id()));
        std::fs::write(&dir, "s3cret-token\n").unwrap();
        let t = HubToken::load(&dir).unwrap();
        assert_eq!((t.secret(), format!("{t:?}")), ("s3cret-token", "HubToken(not shown)".to_string()));
        std::fs::write(&dir, "\n").unwrap();
        assert!(HubToken::load(&dir).unwrap_err().contains("holds no token"));
        let _ = std::fs::remove_file(&dir);
    }
}
