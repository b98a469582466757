//! Secrets never leave the agent: credentials in argv, environment-style assignments and URLs
//! are masked before anything reaches a sink, and so is any secret value the agent has seen in
//! a notebook's environment (e.g. the kernel's `JUPYTERHUB_API_TOKEN`).

use std::{borrow::Cow, collections::BTreeSet, sync::LazyLock};

use regex::Regex;

pub const MASK: &str = "***";

/// Names whose values are secrets: `JUPYTERHUB_API_TOKEN`, `*_TOKEN`, `*_SECRET`, `*PASSWORD*`,
/// `AWS_SECRET_ACCESS_KEY`, `*_API_KEY`, `*_PASSWD`.
static SECRET_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:.*_)?(?:TOKEN|SECRET|SECRET_ACCESS_KEY|API_KEY|PASSWD)$|PASSWORD").expect("constant regex")
});
/// `NAME=value` anywhere in a string (also inside `sh -c "…"` bodies).
static ASSIGNMENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([A-Za-z_][A-Za-z0-9_]*)=([^\s'\x22;&|]+)").expect("constant regex"));
/// `--password=…`, `--token …` style flags.
static FLAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^--?([a-z0-9_-]*(?:password|passwd|token|secret|api-key|apikey))(=.*)?$").expect("constant regex")
});
/// `scheme://user:password@host`
static URL_CREDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):([^/\s@]+)@").expect("constant regex"));

pub fn is_secret_name(name: &str) -> bool {
    SECRET_NAME.is_match(name)
}

#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Secret values seen in notebook environments (only values long enough to be specific).
    known: BTreeSet<String>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a secret value so it is masked wherever it shows up later.
    pub fn learn(&mut self, value: &str) {
        if value.len() >= 8 {
            self.known.insert(value.to_string());
        }
    }

    /// Learns every secret-named variable of a `KEY=VALUE\0…` environment block.
    pub fn learn_environ(&mut self, environ: &[u8]) {
        for kv in environ.split(|&b| b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some((k, v)) = kv.split_once('=') {
                if is_secret_name(k) {
                    self.learn(v);
                }
            }
        }
    }

    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(s);
        for secret in &self.known {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        if URL_CREDS.is_match(&out) {
            out = Cow::Owned(URL_CREDS.replace_all(&out, format!("${{1}}:{MASK}@")).into_owned());
        }
        if ASSIGNMENT.captures_iter(&out).any(|c| is_secret_name(&c[1])) {
            let replaced = ASSIGNMENT.replace_all(&out, |c: &regex::Captures| {
                if is_secret_name(&c[1]) {
                    format!("{}={MASK}", &c[1])
                } else {
                    c[0].to_string()
                }
            });
            out = Cow::Owned(replaced.into_owned());
        }
        out
    }

    /// Masks argv: each argument as text, plus the value after a bare secret flag
    /// (`--password hunter2`) and the value of `--token=…`.
    pub fn argv(&self, argv: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(argv.len());
        let mut mask_next = false;
        for a in argv {
            if mask_next {
                out.push(MASK.to_string());
                mask_next = false;
                continue;
            }
            if let Some(c) = FLAG.captures(a) {
                match c.get(2) {
                    Some(_) => out.push(format!("{}={MASK}", a.split('=').next().unwrap_or(""))),
                    None => {
                        out.push(a.clone());
                        mask_next = true;
                    }
                }
                continue;
            }
            out.push(self.text(a).into_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn masks_flags_assignments_urls_and_known_values() {
        let mut r = Redactor::new();
        r.learn_environ(b"JUPYTERHUB_API_TOKEN=abcdef0123456789\0HOME=/home/jovyan\0SHORT_TOKEN=x\0");
        let argv = v(&[
            "curl",
            "-H",
            "Authorization: token abcdef0123456789",
            "https://alice:s3cr3t@example.org/x",
            "--password",
            "hunter2",
            "--api-token=zzz",
            "AWS_SECRET_ACCESS_KEY=AKIAxyz",
            "sh -c 'GITHUB_TOKEN=ghp_1 git push'",
            "HOME=/tmp",
        ]);
        assert_eq!(
            r.argv(&argv),
            v(&[
                "curl",
                "-H",
                "Authorization: token ***",
                "https://alice:***@example.org/x",
                "--password",
                "***",
                "--api-token=***",
                "AWS_SECRET_ACCESS_KEY=***",
                "sh -c 'GITHUB_TOKEN=*** git push'",
                "HOME=/tmp",
            ])
        );
        // Too short to be specific: not learned, so ordinary text is not mangled.
        assert_eq!(r.text("x marks"), "x marks");
    }

    #[test]
    fn secret_names() {
        for n in [
            "JUPYTERHUB_API_TOKEN",
            "GITHUB_TOKEN",
            "DB_PASSWORD",
            "MYPASSWORDFILE",
            "AWS_SECRET_ACCESS_KEY",
            "CLIENT_SECRET",
            "OPENAI_API_KEY",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["HOME", "PATH", "TOKENIZERS_PARALLELISM", "JPY_SESSION_NAME"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }
}
