//! The outputs a policy or the command line names (`stdout`, `file:PATH?…`, syslog, HTTP,
//! Splunk HEC), parsed and checked here so that `policy check` refuses a bad one at its line;
//! `sinks::build` makes the sinks from them.

use std::path::PathBuf;

/// Where a Splunk HEC token comes from: never the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl TokenSource {
    pub fn read(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        Ok(match self {
            TokenSource::Env(v) => std::env::var(v).with_context(|| format!("HEC token: ${v} is not set"))?,
            TokenSource::File(p) => {
                std::fs::read_to_string(p).with_context(|| format!("HEC token file {}", p.display()))?
            }
        }
        .trim()
        .to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetTarget {
    /// Falco JSON, one alert per POST (falcosidekick, webhooks).
    Http(String),
    Splunk {
        url: String,
        token: TokenSource,
    },
    Syslog {
        proto: String,
        host: String,
        port: u16,
        ca: Option<PathBuf>,
    },
}

/// An output as written on the command line or in the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    Stdout,
    /// JSON lines; rotated at `max_bytes`, keeping `keep` old files.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
    Net {
        name: String,
        target: NetTarget,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("unknown output {0:?} (expected stdout, file:PATH, syslog+tcp|tls|udp://HOST:PORT, http(s)://…, splunk-hec+https://…)")]
    Unknown(String),
    #[error("output {0:?}: {1}")]
    Bad(String, String),
}

fn split_query(s: &str) -> (&str, Vec<(String, String)>) {
    match s.split_once('?') {
        None => (s, vec![]),
        Some((base, q)) => (
            base,
            q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ),
    }
}

fn host_port(spec: &str, rest: &str) -> Result<(String, u16), OutputError> {
    let bad = |m: &str| OutputError::Bad(spec.to_string(), m.to_string());
    let hp = rest.trim_end_matches('/');
    let (host, port) = hp.rsplit_once(':').ok_or_else(|| bad("needs HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    Ok((host.to_string(), port))
}

impl OutputSpec {
    pub fn parse(s: &str) -> Result<Self, OutputError> {
        let bad = |m: &str| OutputError::Bad(s.to_string(), m.to_string());
        if s == "stdout" {
            return Ok(Self::Stdout);
        }
        if let Some(p) = s.strip_prefix("file:") {
            let (path, q) = split_query(p);
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad("the file path must be absolute"));
            }
            let mut max_bytes = 100 << 20;
            let mut keep = 5;
            for (k, v) in q {
                match k.as_str() {
                    "max_bytes" => max_bytes = v.parse().map_err(|_| bad("max_bytes is a number of bytes"))?,
                    "keep" => keep = v.parse().map_err(|_| bad("keep is a number of files"))?,
                    _ => return Err(bad(&format!("unknown option {k}"))),
                }
            }
            return Ok(Self::File { path, max_bytes, keep });
        }
        for proto in ["tcp", "tls", "udp"] {
            if let Some(rest) = s.strip_prefix(&format!("syslog+{proto}://")) {
                let (hp, q) = split_query(rest);
                let (host, port) = host_port(s, hp)?;
                let mut ca = None;
                for (k, v) in q {
                    match k.as_str() {
                        "ca" if proto == "tls" => ca = Some(PathBuf::from(v)),
                        _ => return Err(bad(&format!("unknown option {k}"))),
                    }
                }
                return Ok(Self::Net {
                    name: s.to_string(),
                    target: NetTarget::Syslog { proto: proto.into(), host, port, ca },
                });
            }
        }
        if let Some(rest) = s.strip_prefix("splunk-hec+") {
            let (url, q) = split_query(rest);
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(bad("splunk-hec+ needs an http(s) URL"));
            }
            let mut token = None;
            for (k, v) in q {
                match k.as_str() {
                    "token_env" => token = Some(TokenSource::Env(v)),
                    "token_file" => token = Some(TokenSource::File(PathBuf::from(v))),
                    _ => {
                        return Err(bad(&format!(
                            "unknown option {k} (the token comes from token_env= or token_file=, never the URL)"
                        )))
                    }
                }
            }
            let token = token.ok_or_else(|| bad("needs token_env=VAR or token_file=PATH"))?;
            let url = if url.trim_end_matches('/').matches('/').count() <= 2 {
                format!("{}/services/collector/event", url.trim_end_matches('/'))
            } else {
                url.to_string()
            };
            return Ok(Self::Net { name: format!("splunk-hec+{url}"), target: NetTarget::Splunk { url, token } });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            s.parse::<hyper::Uri>().map_err(|e| bad(&e.to_string()))?;
            return Ok(Self::Net { name: s.to_string(), target: NetTarget::Http(s.to_string()) });
        }
        Err(OutputError::Unknown(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_output_kind() {
        assert_eq!(OutputSpec::parse("stdout"), Ok(OutputSpec::Stdout));
        assert_eq!(
            OutputSpec::parse("file:/var/log/g.json?max_bytes=1000&keep=2"),
            Ok(OutputSpec::File { path: "/var/log/g.json".into(), max_bytes: 1000, keep: 2 })
        );
        assert!(matches!(
            OutputSpec::parse("syslog+tcp://127.0.0.1:514"),
            Ok(OutputSpec::Net { target: NetTarget::Syslog { ref proto, port: 514, .. }, .. }) if proto == "tcp"
        ));
        assert!(matches!(
            OutputSpec::parse("syslog+tls://siem.example:6514?ca=/etc/ca.pem"),
            Ok(OutputSpec::Net { .. })
        ));
        assert!(matches!(
            OutputSpec::parse("http://127.0.0.1:2801/"),
            Ok(OutputSpec::Net { target: NetTarget::Http(_), .. })
        ));
        let s = OutputSpec::parse("splunk-hec+https://splunk:8088?token_env=HEC_TOKEN").unwrap();
        assert!(
            matches!(s, OutputSpec::Net { target: NetTarget::Splunk { ref url, token: TokenSource::Env(ref v) }, .. }
            if url == "https://splunk:8088/services/collector/event" && v == "HEC_TOKEN")
        );
        assert!(OutputSpec::parse("splunk-hec+https://splunk:8088?token=abc").is_err(), "no token in argv");
        assert!(OutputSpec::parse("file:relative.json").is_err());
        assert!(OutputSpec::parse("syslog+tcp://host").is_err());
        assert!(OutputSpec::parse("carrier-pigeon://x").is_err());
    }
}
