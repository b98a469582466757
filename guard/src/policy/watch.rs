//! Noticing that the policy file changed, and reading it only once it is whole.
//!
//! A ConfigMap update swaps a symlink, which is atomic; but a file rewritten in place (an
//! editor, `cp`, `cat >`, a test's `fs::write`) is first truncated, then written, possibly in
//! several pieces. Read in between, a prefix of the new policy can still parse (a YAML file cut
//! before its `rules:` section is valid) and would be applied as if complete. So a change is
//! acted on only after the file's identity has held still for [`SETTLE`], and only if it is the
//! same after reading as before.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Policy, PolicyError};

/// How long the file must stay unchanged before a change is loaded.
pub const SETTLE: Duration = Duration::from_millis(400);

/// What tells one version of the file from another: inode (a swapped symlink or a rename),
/// modification time and length.
type Stamp = (u64, i64, i64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

#[derive(Clone, Debug)]
pub struct PolicyFile {
    path: PathBuf,
    /// The version last loaded (or rejected): not loaded again.
    loaded: Option<Stamp>,
    /// A newer version seen, and when it was first seen as it is.
    pending: Option<(Stamp, Instant)>,
}

impl PolicyFile {
    /// Watches `path`, taking its present version as the one in force.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), loaded: stamp(path), pending: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file now: at start, and on SIGHUP (the operator says it is complete).
    pub fn load_now(&mut self) -> Result<Policy, PolicyError> {
        self.loaded = stamp(&self.path);
        self.pending = None;
        Policy::from_path(&self.path)
    }

    /// Called on a timer: the new policy once the file has changed and then held still for
    /// [`SETTLE`]; None while it is unchanged, still changing, or missing (a missing file is
    /// not a policy: the one in force stays until a file is there again).
    pub fn poll(&mut self, now: Instant) -> Option<Result<Policy, PolicyError>> {
        let current = stamp(&self.path);
        let Some(seen) = current.filter(|s| Some(*s) != self.loaded) else {
            self.pending = None;
            return None;
        };
        match self.pending {
            Some((s, since)) if s == seen && now.duration_since(since) >= SETTLE => {}
            Some((s, _)) if s == seen => return None,
            _ => {
                self.pending = Some((seen, now));
                return None;
            }
        }
        let text = std::fs::read_to_string(&self.path);
        // Written to while it was read: wait for it to settle again.
        if stamp(&self.path) != Some(seen) {
            self.pending = None;
            return None;
        }
        self.loaded = Some(seen);
        self.pending = None;
        Some(Policy::from_read(&self.path, text))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guard-policy-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("policy.yaml")
    }

    const WHOLE: &str = "mode: enforce\nrules:\n  disabled: [notebook.network_tool]\n";

    #[test]
    fn a_file_being_written_is_loaded_only_once_whole_and_still() {
        let path = scratch("partial");
        // Not the length of the prefix below: the two must differ even within one mtime tick.
        std::fs::write(&path, "mode: monitor # first\n").unwrap();
        let mut w = PolicyFile::new(&path);
        let t0 = Instant::now();
        assert!(w.poll(t0).is_none(), "nothing changed");

        // Truncated and half written: a prefix that parses on its own.
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&WHOLE.as_bytes()[..14]).unwrap();
        assert!(Policy::from_str("prefix", &WHOLE[..14]).is_ok(), "the prefix must be a valid policy");
        assert!(w.poll(t0).is_none(), "a change is not loaded when first seen");
        assert!(w.poll(t0 + SETTLE / 2).is_none(), "nor before it has held still");
        // The rest arrives before it settled: the clock starts again.
        f.write_all(&WHOLE.as_bytes()[14..]).unwrap();
        drop(f);
        let t1 = t0 + SETTLE;
        assert!(w.poll(t1).is_none(), "the file changed again, so it is not yet still");
        let p = w.poll(t1 + SETTLE).expect("loaded once still").unwrap();
        assert_eq!(p.mode, super::super::Mode::Enforce);
        assert_eq!(p.rules.disabled, vec!["notebook.network_tool".to_string()]);
        assert!(w.poll(t1 + SETTLE * 3).is_none(), "a version is loaded once");
    }

    #[test]
    fn a_bad_version_is_reported_once_and_a_missing_file_keeps_the_policy() {
        let path = scratch("bad");
        std::fs::write(&path, "mode: monitor\n").unwrap();
        let mut w = PolicyFile::new(&path);
        std::fs::write(&path, "mode: sometimes\n").unwrap();
        let t0 = Instant::now();
        assert!(w.poll(t0).is_none());
        let e = w.poll(t0 + SETTLE).expect("a settled change").unwrap_err();
        assert_eq!(e.key, "mode");
        assert!(w.poll(t0 + SETTLE * 2).is_none(), "a rejected version is not read again");

        std::fs::remove_file(&path).unwrap();
        assert!(w.poll(t0 + SETTLE * 3).is_none());
        assert!(w.poll(t0 + SETTLE * 5).is_none(), "no file, no policy change");
        std::fs::write(&path, WHOLE).unwrap();
        assert!(w.poll(t0 + SETTLE * 6).is_none());
        assert!(w.poll(t0 + SETTLE * 7).expect("back").is_ok());
    }

    #[test]
    fn a_version_loaded_on_request_is_not_loaded_again() {
        let path = scratch("sighup");
        std::fs::write(&path, "mode: monitor\n").unwrap();
        let mut w = PolicyFile::new(&path);
        std::fs::write(&path, WHOLE).unwrap();
        let t0 = Instant::now();
        assert!(w.poll(t0).is_none(), "seen, not yet settled");
        assert!(w.load_now().is_ok());
        assert!(w.poll(t0 + SETTLE * 2).is_none(), "what SIGHUP loaded is in force");
    }
}
