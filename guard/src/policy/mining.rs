//! The operator's miner patterns (policy `mining.patterns_file`, a Kubernetes Secret), read
//! with the policy; `detect::mining` matches command lines against them.

use std::{fmt, path::Path};

/// The operator's patterns: case-insensitive substrings of the command line, one per line
/// (`#` comments and blank lines skipped). Never printed: Debug shows how many there are.
#[derive(Clone, Default, PartialEq)]
pub struct OperatorPatterns(Vec<(usize, String)>);

impl fmt::Debug for OperatorPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorPatterns({} patterns, not shown)", self.0.len())
    }
}

impl OperatorPatterns {
    /// Reads the file; an error names the file, never a line's content.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .enumerate()
                .map(|(i, l)| (i + 1, l.trim()))
                .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
                .map(|(n, l)| (n, l.to_lowercase()))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (line number, lower-cased pattern): the line number is the pattern's id in alerts.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str)> {
        self.0.iter().map(|(n, p)| (*n, p.as_str()))
    }
}
