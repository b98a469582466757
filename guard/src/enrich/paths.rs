//! Facts about an exec's paths, computed the same way by enrichment and the verdict: which
//! directory a binary is in, whether a path is below a prefix, whether the image has no file.

use std::path::{Component, Path};

use crate::{policy::identity::SYSTEM_DIRS, sensors::decode::Exec};

/// An absolute path with no `//` and no component starting with a dot: its bytes are its
/// components, so comparing bytes is comparing paths. These checks run for every exec, and
/// `Path`'s own comparisons walk components one by one.
fn plain(b: &[u8]) -> bool {
    b.first() == Some(&b'/') && !b.windows(2).any(|w| w == b"//" || w == b"/.")
}

/// `path` is `prefix` or below it, with no `..` that could climb back out.
pub fn under(path: &Path, prefix: &str) -> bool {
    let (p, pre) = (path.as_os_str().as_encoded_bytes(), prefix.as_bytes());
    if plain(p) && plain(pre) {
        let pre = pre.strip_suffix(b"/").unwrap_or(pre);
        return p.starts_with(pre) && (p.len() == pre.len() || p[pre.len()] == b'/');
    }
    path.starts_with(Path::new(prefix)) && path.components().all(|c| c != Component::ParentDir)
}

/// The file is directly in one of the system binary directories.
pub fn in_system_dir(path: &Path) -> bool {
    let Some(dir) = path.parent() else { return false };
    let b = dir.as_os_str().as_encoded_bytes();
    if plain(b) && !b.ends_with(b"/") {
        return SYSTEM_DIRS.iter().any(|s| s.as_bytes() == b);
    }
    SYSTEM_DIRS.iter().any(|s| Path::new(s) == dir)
}

/// The image has no file behind it (memfd, a deleted file, `/dev/fd/N`, `/proc/…/fd/N`).
pub fn is_fileless(e: &Exec) -> bool {
    let f = e.filename.to_string_lossy();
    e.exe_nlink == 0
        || f.starts_with("/dev/fd/")
        || (f.starts_with("/proc/") && f.contains("/fd/"))
        || e.exe_name.to_string_lossy().starts_with("memfd:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_prefixes_are_component_wise() {
        assert!(under(Path::new("/tmp/x"), "/tmp"));
        assert!(!under(Path::new("/tmpfoo/x"), "/tmp"));
        assert!(!under(Path::new("/tmp/../usr/bin/x"), "/tmp"));
        // The byte comparison agrees with `Path`'s component-wise one on every shape.
        let reference = |p: &str, pre: &str| {
            Path::new(p).starts_with(pre) && Path::new(p).components().all(|c| c != Component::ParentDir)
        };
        let paths = [
            "/tmp",
            "/tmp/",
            "/tmp/x",
            "/tmp//x",
            "/tmp/./x",
            "/tmp/.x",
            "/tmp/../x",
            "/tmpx",
            "/tm",
            "/",
            "/dev/shm/a",
            "/home/jovyan/.local/bin/x",
            "/home/jovyan/work/a/b",
            "x/tmp/y",
            "",
        ];
        let prefixes = ["/tmp", "/tmp/", "/", "/home/jovyan", "/home/jovyan/.local", "/dev/shm/"];
        for p in paths {
            for pre in prefixes {
                assert_eq!(under(Path::new(p), pre), reference(p, pre), "{p} under {pre}");
            }
        }
    }

    #[test]
    fn system_dirs_are_matched_as_paths() {
        for (p, want) in [
            ("/usr/bin/true", true),
            ("/bin/sh", true),
            ("/usr//bin/true", true),
            ("/usr/bin/./true", true),
            ("/usr/bin/x/true", false),
            ("/usr/binx/true", false),
            ("/opt/conda/bin/python", false),
            ("true", false),
            ("/", false),
        ] {
            assert_eq!(in_system_dir(Path::new(p)), want, "{p}");
        }
    }
}
