//! `persistence:` — where a notebook session can leave code for the next kernel, server or
//! terminal to run (IPython startup files, Jupyter and IPython config, kernelspecs, `.pth`
//! and `*customize.py` hooks, shell rc files), and which writers of them are known tools.
//!
//! Locations are globs anchored at the notebook's home (`~/`), at each Python environment
//! the notebook runs (`{env}/`, from its server's and kernels' interpreters) or at its root
//! (`/`). They compile into a tree of path components, which the file sensor walks to know
//! which directories to watch and what a name written in one of them is.

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

/// The kind `known_writers` name for files they make executable (drift), not a location.
pub const EXECUTABLE: &str = "executable";

/// The policy section as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceSpec {
    pub enabled: bool,
    pub locations: Vec<LocationSpec>,
    pub known_writers: Vec<KnownWriter>,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        Self { enabled: true, locations: Vec::new(), known_writers: Vec::new() }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocationSpec {
    /// `~/…`, `{env}/…` or `/…`; `*`, `?` and `[…]` match within one component.
    pub path: String,
    /// What the location is (`ipython-startup`, `site-hook`, …): named in alerts, and what
    /// `known_writers[].kinds` refer to.
    pub kind: String,
}

/// A tool whose writes of some kinds are expected (a package install writing a `.pth`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KnownWriter {
    pub name: String,
    /// What the writer (or one of its nearest ancestors) runs: the program's file name, or for
    /// Python, the script's name or the `-m` module (`pip`, `conda`, `ipython`).
    pub programs: Vec<String>,
    /// Words its command line holds after the program, in this order (`[install]`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The location kinds it may write.
    pub kinds: Vec<String>,
    /// `none`: no alert; `info`: `notebook.persistence_known_writer` at Informational.
    #[serde(default)]
    pub report: Report,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Report {
    #[default]
    None,
    Info,
}

/// Where a location's path starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anchor {
    Home,
    Env,
    Root,
}

/// One path component of a location.
#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Glob(GlobMatcher),
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Literal(l) => l == name,
            Part::Glob(g) => g.is_match(name),
        }
    }
}

pub type NodeId = usize;

#[derive(Clone, Debug)]
struct Node {
    part: Option<Part>,
    children: Vec<NodeId>,
    /// A file here is a location of this kind.
    kind: Option<String>,
}

/// The locations as a tree of components below their anchors.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    anchors: Vec<(Anchor, NodeId)>,
}

/// What a name in a watched directory is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NameMatch {
    /// A location file of this kind.
    pub kind: Option<String>,
    /// A directory on the way to locations (watch it when it appears).
    pub dirs: Vec<NodeId>,
}

impl Tree {
    pub fn compile(locations: &[LocationSpec]) -> Result<Self, (String, String, String)> {
        let mut t = Tree { nodes: Vec::new(), anchors: Vec::new() };
        for (i, l) in locations.iter().enumerate() {
            let key = format!("persistence.locations[{i}].path");
            let bad = |m: String| (key.clone(), l.path.clone(), m);
            let (anchor, rest) = if let Some(r) = l.path.strip_prefix("~/") {
                (Anchor::Home, r)
            } else if let Some(r) = l.path.strip_prefix("{env}/") {
                (Anchor::Env, r)
            } else if let Some(r) = l.path.strip_prefix('/') {
                (Anchor::Root, r)
            } else {
                return Err(bad(format!("{:?} must start with ~/, {{env}}/ or /", l.path)));
            };
            if l.kind.is_empty() || !l.kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err((
                    format!("persistence.locations[{i}].kind"),
                    l.kind.clone(),
                    format!("{:?} is not a kind name (letters, digits, - and _)", l.kind),
                ));
            }
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains("**")) {
                return Err(bad(format!("{:?}: empty, `.`, `..` and `**` components are not allowed", l.path)));
            }
            let mut at = t.anchor(anchor);
            for p in parts {
                let part = if p.contains(['*', '?', '[']) {
                    let g = Glob::new(p).map_err(|e| bad(format!("bad glob {p:?}: {e}")))?;
                    Part::Glob(g.compile_matcher())
                } else {
                    Part::Literal(p.to_string())
                };
                at = t.child(at, p, part);
            }
            match &t.nodes[at].kind {
                Some(k) if *k != l.kind => return Err(bad(format!("already listed as kind {k:?}"))),
                _ => t.nodes[at].kind = Some(l.kind.clone()),
            }
        }
        Ok(t)
    }

    /// No locations.
    pub fn empty() -> Self {
        Tree { nodes: Vec::new(), anchors: Vec::new() }
    }

    fn anchor(&mut self, a: Anchor) -> NodeId {
        if let Some(&(_, n)) = self.anchors.iter().find(|(x, _)| *x == a) {
            return n;
        }
        self.nodes.push(Node { part: None, children: Vec::new(), kind: None });
        let n = self.nodes.len() - 1;
        self.anchors.push((a, n));
        n
    }

    fn child(&mut self, parent: NodeId, text: &str, part: Part) -> NodeId {
        let same = |n: &Node| match &n.part {
            Some(Part::Literal(l)) => l == text,
            Some(Part::Glob(g)) => g.glob().glob() == text,
            None => false,
        };
        if let Some(&c) = self.nodes[parent].children.iter().find(|&&c| same(&self.nodes[c])) {
            return c;
        }
        self.nodes.push(Node { part: Some(part), children: Vec::new(), kind: None });
        let n = self.nodes.len() - 1;
        self.nodes[parent].children.push(n);
        n
    }

    /// The anchors locations start from, with their nodes.
    pub fn anchors(&self) -> &[(Anchor, NodeId)] {
        &self.anchors
    }

    /// The literal name of `node`'s component, when it has no wildcard.
    pub fn literal(&self, node: NodeId) -> Option<&str> {
        match &self.nodes.get(node)?.part {
            Some(Part::Literal(l)) => Some(l),
            _ => None,
        }
    }

    /// `node`'s child components that lead further down (directories to watch).
    pub fn dir_children(&self, node: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.children.iter().copied())
            .filter(|&c| !self.nodes[c].children.is_empty())
    }

    /// What `name`, in a directory at `node`, is.
    pub fn name(&self, node: NodeId, name: &str) -> NameMatch {
        let mut m = NameMatch::default();
        let Some(n) = self.nodes.get(node) else { return m };
        for &c in &n.children {
            let child = &self.nodes[c];
            if !child.part.as_ref().is_some_and(|p| p.matches(name)) {
                continue;
            }
            if m.kind.is_none() {
                m.kind.clone_from(&child.kind);
            }
            if !child.children.is_empty() {
                m.dirs.push(c);
            }
        }
        m
    }

    /// The first location kind at or below `node` (what a symlink put in place of a
    /// directory on the way to locations redirects).
    pub fn kind_below(&self, node: NodeId) -> Option<&str> {
        let n = self.nodes.get(node)?;
        n.kind.as_deref().or_else(|| n.children.iter().find_map(|&c| self.kind_below(c)))
    }
}

/// Checks the section: locations compile, kinds named by known writers exist.
pub fn validate(s: &PersistenceSpec) -> Result<(), (String, String, String)> {
    Tree::compile(&s.locations)?;
    for (i, w) in s.known_writers.iter().enumerate() {
        if w.programs.is_empty() {
            return Err((
                format!("persistence.known_writers[{i}].programs"),
                w.name.clone(),
                "name at least one program".into(),
            ));
        }
        for (j, k) in w.kinds.iter().enumerate() {
            if k != EXECUTABLE && !s.locations.iter().any(|l| &l.kind == k) {
                return Err((
                    format!("persistence.known_writers[{i}].kinds[{j}]"),
                    k.clone(),
                    format!("no location has kind {k:?} (and it is not {EXECUTABLE:?}, files made executable)"),
                ));
            }
        }
        for (j, p) in w.programs.iter().enumerate() {
            Glob::new(p).map_err(|e| {
                (format!("persistence.known_writers[{i}].programs[{j}]"), p.clone(), format!("bad glob {p:?}: {e}"))
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(path: &str, kind: &str) -> LocationSpec {
        LocationSpec { path: path.into(), kind: kind.into() }
    }

    #[test]
    fn names_in_watched_directories_are_told_apart() {
        let t = Tree::compile(&[
            loc("~/.ipython/profile_*/startup/*.py", "ipython-startup"),
            loc("~/.ipython/profile_*/ipython_config.py", "ipython-config"),
            loc("~/.bashrc", "shell-rc"),
        ])
        .unwrap();
        let (a, home) = t.anchors()[0];
        assert_eq!(a, Anchor::Home);
        assert_eq!(t.name(home, ".bashrc").kind.as_deref(), Some("shell-rc"));
        let ipy = t.name(home, ".ipython");
        assert_eq!((ipy.kind, ipy.dirs.len()), (None, 1));
        let prof = t.name(ipy.dirs[0], "profile_default");
        assert_eq!(prof.dirs.len(), 1);
        assert_eq!(t.name(prof.dirs[0], "ipython_config.py").kind.as_deref(), Some("ipython-config"));
        let startup = t.name(prof.dirs[0], "startup").dirs[0];
        assert_eq!(t.name(startup, "00-x.py").kind.as_deref(), Some("ipython-startup"));
        assert_eq!(t.name(startup, "README"), NameMatch::default());
        // A symlink in place of the profile redirects its startup files first.
        assert_eq!(t.kind_below(prof.dirs[0]), Some("ipython-startup"));
    }

    #[test]
    fn bad_locations_are_refused_with_their_key() {
        for (path, why) in [("rel/x", "must start"), ("~/a/../b", "`..`"), ("~/a/**/b", "`**`"), ("~/a//b", "empty")] {
            let e = Tree::compile(&[loc(path, "k")]).unwrap_err();
            assert_eq!(e.0, "persistence.locations[0].path");
            assert!(e.2.contains(why), "{path}: {}", e.2);
        }
        let e = Tree::compile(&[loc("~/x", "a"), loc("~/x", "b")]).unwrap_err();
        assert!(e.2.contains("already listed"), "{}", e.2);
        let spec = PersistenceSpec {
            enabled: true,
            locations: vec![loc("~/x", "a")],
            known_writers: vec![KnownWriter {
                name: "pip".into(),
                programs: vec!["pip".into()],
                args: vec![],
                kinds: vec!["nope".into()],
                report: Report::None,
            }],
        };
        assert_eq!(validate(&spec).unwrap_err().0, "persistence.known_writers[0].kinds[0]");
    }
}
