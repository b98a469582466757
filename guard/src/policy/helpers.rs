//! Helper programs: what Python and the data-science stack run in normal use, named by what
//! they are — a program name in a class of trusted locations (`uname` among the system
//! binaries, `ffmpeg-*` inside imageio_ffmpeg's package dir) — with the parent and arguments
//! that make them harmless. Where a name leads is resolved per notebook root; only files the
//! notebook's user could not have written count (`provenance`).

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HelperParent {
    /// The parent is a Python process of the notebook.
    #[default]
    Python,
    /// The parent is Python or another allowed helper (git → git-remote-https, gcc → cc1).
    Helper,
}

/// Classes of places where trusted programs live, resolved in each notebook's root.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Location {
    /// The system's PATH directories (`/usr/local/sbin` … `/bin`).
    System,
    /// Programs' private directories: `/usr/libexec`, `/usr/local/libexec`, `/usr/lib`
    /// (`git-core/git-*`, `gcc/*/*/cc1`).
    Libexec,
    /// The `bin` directory of each trusted Python environment (`/opt/conda/bin`, a venv's).
    PythonEnv,
    /// The site-packages (and Debian's dist-packages) of each trusted Python environment,
    /// where wheels ship binaries (`imageio_ffmpeg/binaries/ffmpeg-*`).
    SitePackages,
}

impl Location {
    /// The name the policy spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Location::System => "system",
            Location::Libexec => "libexec",
            Location::PythonEnv => "python-env",
            Location::SitePackages => "site-packages",
        }
    }
}

fn default_locations() -> Vec<Location> {
    vec![Location::System]
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Helper {
    pub name: String,
    /// Programs by name (a glob; may name a path below the location, `git-core/git-*`).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Where `programs` are looked for.
    #[serde(default = "default_locations", rename = "in")]
    pub locations: Vec<Location>,
    /// Absolute paths (globs), for what no location class covers.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Alternatives; each is a list of globs for argv[1..] (same length). None: any arguments.
    #[serde(default)]
    pub args: Option<Vec<Vec<String>>>,
    #[serde(default)]
    pub parent: HelperParent,
}

/// An argument alternative's last element that stands for any further arguments, none included
/// (a script's own arguments after `env python3 SCRIPT`).
pub const REST_ARGS: &str = "**";

/// A problem with `helpers[i]`: (key, the value to point at, message).
pub type HelperError = (String, String, String);

/// Checks one helper entry (`i` is its index, for the error's key).
pub fn validate(i: usize, h: &Helper) -> Result<(), HelperError> {
    let key = |k: &str| format!("helpers[{i}]{k}");
    if h.paths.is_empty() && h.programs.is_empty() {
        return Err((key(".programs"), h.name.clone(), "a helper needs programs (or paths)".into()));
    }
    if !h.programs.is_empty() && h.locations.is_empty() {
        return Err((key(".in"), h.name.clone(), "programs need at least one location class".into()));
    }
    for (j, p) in h.programs.iter().enumerate() {
        let k = key(&format!(".programs[{j}]"));
        if p.starts_with('/') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            let msg = format!("{p:?} is a name or a path below a location, not an absolute path (that is `paths`)");
            return Err((k, p.clone(), msg));
        }
        Glob::new(p).map_err(|e| (k, p.clone(), format!("bad glob {p:?}: {e}")))?;
    }
    for (j, g) in h.paths.iter().enumerate() {
        let k = key(&format!(".paths[{j}]"));
        if !g.starts_with('/') {
            return Err((k, g.clone(), format!("{g:?} is not an absolute path")));
        }
        Glob::new(g).map_err(|e| (k, g.clone(), format!("bad glob {g:?}: {e}")))?;
    }
    for (a, alt) in h.args.iter().flatten().enumerate() {
        for (j, g) in alt.iter().enumerate() {
            let k = key(&format!(".args[{a}][{j}]"));
            if g == REST_ARGS && j + 1 != alt.len() {
                return Err((k, g.clone(), format!("{REST_ARGS:?} (any further arguments) must come last")));
            }
            Glob::new(g).map_err(|e| (k, g.clone(), format!("bad glob: {e}")))?;
        }
    }
    Ok(())
}

/// A helper's argument alternatives, compiled: (globs, whether more arguments may follow).
#[derive(Clone, Debug)]
pub struct ArgMatcher(Option<Vec<(Vec<GlobMatcher>, bool)>>);

impl ArgMatcher {
    pub fn new(args: &Option<Vec<Vec<String>>>) -> Self {
        Self(args.as_ref().map(|alts| {
            alts.iter()
                .map(|alt| {
                    let rest = alt.last().is_some_and(|g| g == REST_ARGS);
                    let globs = &alt[..alt.len() - usize::from(rest)];
                    (globs.iter().filter_map(|g| Glob::new(g).ok().map(|g| g.compile_matcher())).collect(), rest)
                })
                .collect()
        }))
    }

    /// `args` is argv[1..].
    pub fn matches(&self, args: &[String]) -> bool {
        match &self.0 {
            None => true,
            Some(alts) => alts.iter().any(|(alt, rest)| {
                (alt.len() == args.len() || (*rest && args.len() > alt.len()))
                    && alt.iter().zip(args).all(|(g, a)| g.is_match(a))
            }),
        }
    }
}
