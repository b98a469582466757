//! Provenance: whether a file the policy's paths lead to may be trusted as an interpreter or
//! a helper. Paths say where to look; they never make a file trustworthy, since the notebook's
//! user owns whole interpreter trees in the most used images (docker-stacks' `/opt/conda`,
//! repo2docker's `/srv/conda`) and their home. A file is trusted when its user could not have
//! written it:
//! - **sealed**: owned by root with no group or other write bit (whoever the notebook runs as,
//!   unless it runs as root — a posture problem of its own);
//! - **the image's own**: in an overlay root, a file still in the image's lower layers (the
//!   first write copies a file up to the container's upper layer, so a file the user wrote or
//!   changed is there);
//! - anything else only when its content is byte for byte one of the trusted interpreters
//!   (conda's hard links and copies when it makes an env).
//!
//! Directories do not change the verdict: trust attaches to an identity (device, inode, change
//! time), and whoever controls a directory can only put another file, another identity, in a
//! trusted one's place — that file is judged on its own. A trusted file written later changes
//! its change time, so it is another identity from then on, in the kernel too.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use super::identity::Root;
use crate::discovery::cgroup::unescape_octal;

/// Why a file is, or is not, trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// Its user could not have written it.
    Sealed,
    /// The image's own file, unmodified (an overlay root's lower layers).
    Image,
    /// Writable by or written by someone other than root.
    UserWritable,
}

impl Provenance {
    pub fn trusted(self) -> bool {
        self != Provenance::UserWritable
    }
}

/// The container's writable layer, for an overlay root (`None` otherwise).
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// The upper directory as the agent reaches it.
    upper: Option<PathBuf>,
    overlay: bool,
}

impl Layers {
    /// The layers of the root of process `pid` (`proc_root`/`pid`), from its mountinfo: the
    /// mount at `/` and, for overlayfs, its `upperdir`. That is a path in the runtime's mount
    /// namespace, the host's: reached as it is when the agent shares it (`guard run` on a
    /// node), else through `proc_root`/1/root (a DaemonSet with hostPID). Where neither
    /// reaches it the layers cannot be told apart, and a file the notebook's user owns is not
    /// trusted (said once per root).
    pub fn of_process(proc_root: &Path, pid: &str) -> Self {
        let Ok(text) = fs::read_to_string(proc_root.join(pid).join("mountinfo")) else { return Self::default() };
        let Some(upperdir) = parse_root_upperdir(&text) else { return Self::default() };
        let host = proc_root.join("1/root").join(upperdir.trim_start_matches('/'));
        let upper = [PathBuf::from(&upperdir), host].into_iter().find(|p| p.is_dir());
        if upper.is_none() {
            tracing::warn!(
                upperdir,
                "cannot reach a container's upper layer: the files its user owns are not trusted as interpreters"
            );
        }
        Self { upper, overlay: true }
    }

    /// The upper layer's directory as the agent reaches it.
    pub fn upper_dir(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// Where `real` (a path inside the root, symlinks resolved) is in the upper layer, as the
    /// agent reaches it, when it is there.
    pub fn upper_path(&self, real: &Path) -> Option<PathBuf> {
        let p = self.upper.as_ref()?.join(real.strip_prefix("/").unwrap_or(real));
        p.symlink_metadata().is_ok().then_some(p)
    }

    /// True when `real` (a path inside the root, symlinks resolved) is in the upper layer:
    /// created, copied up or changed in the container.
    fn in_upper(&self, real: &Path) -> bool {
        // An upper layer we cannot see may hold anything.
        let Some(upper) = &self.upper else { return true };
        // The file exists in the merged view, so what the upper layer holds at its path is
        // its content (a whiteout there would have hidden it).
        fs::symlink_metadata(upper.join(real.strip_prefix("/").unwrap_or(real))).is_ok()
    }

    pub fn is_overlay(&self) -> bool {
        self.overlay
    }
}

/// The `upperdir` of the overlay mounted at `/`, from mountinfo text.
pub fn parse_root_upperdir(mountinfo: &str) -> Option<String> {
    // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"; the
    // last mount at `/` is the one a process sees.
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (left.split_whitespace().nth(4)? == "/").then_some(right)
        })
        .next_back()
        .and_then(|right| {
            let mut f = right.split_whitespace();
            if f.next()? != "overlay" {
                return None;
            }
            let superopts = f.nth(1)?;
            superopts.split(',').find_map(|o| o.strip_prefix("upperdir=")).map(unescape_octal)
        })
}

/// Who could have written the file at `rel` in `root` (`md`: its metadata).
pub fn of_file(root: &Root, layers: &Layers, rel: &Path, md: &fs::Metadata) -> Provenance {
    if md.uid() == 0 && md.mode() & 0o022 == 0 && !layers.is_overlay() {
        return Provenance::Sealed;
    }
    if layers.is_overlay() {
        // In a container even a sealed-looking file may have been put there by a root user
        // of the container; its layer says who did.
        return match root.real_path(rel) {
            Some(real) if !layers.in_upper(&real) => Provenance::Image,
            Some(_) if md.uid() == 0 && md.mode() & 0o022 == 0 => Provenance::Sealed,
            _ => Provenance::UserWritable,
        };
    }
    Provenance::UserWritable
}

/// `path` without `.` and `..` (lexically, inside a root: `..` at `/` stays at `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Every directory from `/` down to `real`'s is root-owned with no group or other write bit:
/// what a path leads to cannot be changed by the notebook's user. Scripts are trusted by path
/// (the kernel keeps no handle on a `#!` script), so this is asked of theirs.
pub fn sealed_dirs(root: &Root, real: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    real.ancestors().skip(1).all(|d| root.stat(d).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_upper_layer_of_an_overlay_root_only() {
        let containerd = "1234 1200 0:88 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/c/2/fs:/var/lib/c/1/fs,upperdir=/var/lib/c/3/fs,workdir=/var/lib/c/3/work\n\
                          1235 1234 0:89 / /proc rw - proc proc rw\n";
        assert_eq!(parse_root_upperdir(containerd).as_deref(), Some("/var/lib/c/3/fs"));
        let host = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n";
        assert_eq!(parse_root_upperdir(host), None);
        let spaced = "1 0 0:9 / / rw - overlay overlay rw,lowerdir=/a,upperdir=/x\\040y/up,workdir=/w\n";
        assert_eq!(parse_root_upperdir(spaced).as_deref(), Some("/x y/up"));
    }

    #[test]
    fn normalizes_inside_a_root() {
        assert_eq!(normalize(Path::new("/opt/conda/../srv/./x")), PathBuf::from("/opt/srv/x"));
        assert_eq!(normalize(Path::new("/../../etc")), PathBuf::from("/etc"));
    }

    #[test]
    fn only_what_the_user_could_not_have_written_is_trusted_outside_containers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("guard-prov-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("opt/conda/bin")).unwrap();
        fs::create_dir_all(dir.join("opt/conda/envs/x/bin")).unwrap();
        let bin = dir.join("opt/conda/bin/python3.11");
        fs::copy("/bin/true", &bin).unwrap();
        fs::copy("/bin/true", dir.join("opt/conda/envs/x/bin/python3")).unwrap();
        fs::copy("/bin/false", dir.join("opt/conda/envs/x/bin/python3.12")).unwrap();
        let (_, root) = Root::open(&dir).unwrap();
        let verdict = |rel: &str| {
            let md = root.stat(Path::new(rel)).unwrap();
            of_file(&root, &root.layers, Path::new(rel), &md)
        };
        let me_root = nix::unistd::geteuid().is_root();
        if me_root {
            assert_eq!(verdict("/opt/conda/bin/python3.11"), Provenance::Sealed);
        }
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(verdict("/opt/conda/bin/python3.11"), Provenance::UserWritable, "group-writable");
        if me_root {
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
            for f in ["opt/conda/envs/x/bin/python3", "opt/conda/envs/x/bin/python3.12"] {
                nix::unistd::chown(&dir.join(f), Some(1000.into()), Some(100.into())).unwrap();
            }
            // Resolution: the user's byte-identical copy is Python, its other file is not.
            let policy = crate::policy::Policy::default_policy();
            let ids = super::super::identity::RootIdentities::resolve(root, &policy);
            let id = |rel: &str| crate::sensors::decode::FileId::of(&fs::metadata(dir.join(rel)).unwrap());
            assert!(ids.python.contains(&id("opt/conda/bin/python3.11")));
            assert!(ids.python.contains(&id("opt/conda/envs/x/bin/python3")), "a copy of a trusted interpreter");
            assert!(!ids.python.contains(&id("opt/conda/envs/x/bin/python3.12")), "the user's own file");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
