//! Sanctioned kernels: the kernelspecs an admin installed define which kernels a notebook may
//! start, with no configuration. A kernelspec counts when the notebook's user could not have
//! written it (provenance, as for interpreters) and sits in a system Jupyter data dir of the
//! notebook's root: `/usr/share/jupyter/kernels`, `/usr/local/share/jupyter/kernels`, or
//! `{prefix}/share/jupyter/kernels` of a trusted interpreter at `{prefix}/bin/…`. Its `argv[0]`
//! (resolved like the server resolves it: as given, or in the system binary dirs and the
//! interpreter's `bin`) is the kernel's launcher, trusted only on its own provenance. A
//! kernelspec in the user's own dirs (`~/.local/share/jupyter/kernels`) adds nothing: it can
//! only start an interpreter that is trusted already.

use std::path::{Path, PathBuf};

use super::{
    identity::{Root, SYSTEM_DIRS},
    provenance,
};
use crate::sensors::decode::FileId;

const SYSTEM_KERNEL_DIRS: &[&str] = &["/usr/share/jupyter/kernels", "/usr/local/share/jupyter/kernels"];
/// Largest kernel.json read.
const MAX_SPEC: u64 = 64 << 10;

/// A sanctioned kernel's launcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// A binary, known by its identity.
    Binary(FileId),
    /// A `#!` script (R's wrapper), known by its path: the kernel keeps no handle on a script
    /// it runs, so the path counts only where no directory on it is the user's to change.
    Script(PathBuf),
}

/// (launcher, kernel name) of every sanctioned kernel of `root`; `interpreters` are the paths
/// of its trusted interpreters, `python` their identities (a kernelspec that starts one of them
/// adds nothing).
pub fn launchers(root: &Root, interpreters: &[&PathBuf], python: &crate::IdSet<FileId>) -> Vec<(Launcher, String)> {
    let prefixes: Vec<PathBuf> = interpreters
        .iter()
        .filter_map(|p| p.parent().filter(|b| b.ends_with("bin")).and_then(Path::parent).map(Path::to_path_buf))
        .collect();
    let mut dirs: Vec<PathBuf> = SYSTEM_KERNEL_DIRS.iter().map(PathBuf::from).collect();
    dirs.extend(prefixes.iter().map(|p| p.join("share/jupyter/kernels")));
    dirs.dedup();
    let mut bins: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    bins.extend(prefixes.iter().map(|p| p.join("bin")));
    let mut out = Vec::new();
    for dir in dirs {
        let Ok((_, entries)) = root.list(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let spec = dir.join(&name).join("kernel.json");
            let Some(argv0) = trusted_argv0(root, &spec) else { continue };
            let candidates: Vec<PathBuf> = match Path::new(&argv0).is_absolute() {
                true => vec![PathBuf::from(&argv0)],
                false if !argv0.contains('/') => bins.iter().map(|b| b.join(&argv0)).collect(),
                false => vec![],
            };
            let Some((id, path)) = candidates.into_iter().find_map(|p| {
                let md = root.stat(&p).ok().filter(|m| m.is_file())?;
                Some((FileId::of(&md), p))
            }) else {
                continue;
            };
            let Ok(md) = root.stat(&path) else { continue };
            if python.contains(&id) || !provenance::of_file(root, &root.layers, &path, &md).trusted() {
                continue;
            }
            let script = root.read(&path, 2).is_ok_and(|b| b == b"#!");
            match (script, root.real_path(&path)) {
                (false, _) => out.push((Launcher::Binary(id), name)),
                (true, Some(real)) if provenance::sealed_dirs(root, &real) => {
                    // The path as the server execs it, and where it really is.
                    out.push((Launcher::Script(path.clone()), name.clone()));
                    if real != path {
                        out.push((Launcher::Script(real), name));
                    }
                }
                (true, _) => {
                    tracing::info!(path = %path.display(), "a kernel's launcher script in a directory its user may change is not trusted")
                }
            }
        }
    }
    out
}

/// The kernelspec's `argv[0]`, if the spec is one its user could not have written.
fn trusted_argv0(root: &Root, spec: &Path) -> Option<String> {
    let md = root.stat(spec).ok().filter(|m| m.is_file())?;
    if !provenance::of_file(root, &root.layers, spec, &md).trusted() {
        return None;
    }
    let text = root.read(spec, MAX_SPEC).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["argv"][0].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_kernelspec_names_its_launcher_and_a_python_one_adds_nothing() {
        if !nix::unistd::geteuid().is_root() {
            return; // provenance needs root-owned files
        }
        let dir = std::env::temp_dir().join(format!("guard-kspec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["usr/bin", "usr/share/jupyter/kernels/ir", "usr/share/jupyter/kernels/python3"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("usr/bin/R"), "#!/bin/bash\nexec /usr/lib/R/bin/exec/R \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        for d in ["", "usr", "usr/bin"] {
            std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::copy("/bin/true", dir.join("usr/bin/python3")).unwrap();
        std::fs::write(dir.join("usr/share/jupyter/kernels/ir/kernel.json"), r#"{"argv": ["R", "--slave"]}"#).unwrap();
        std::fs::write(dir.join("usr/share/jupyter/kernels/python3/kernel.json"), r#"{"argv": ["python3", "-m"]}"#)
            .unwrap();
        let (_, root) = Root::open(&dir).unwrap();
        let py = FileId::of(&std::fs::metadata(dir.join("usr/bin/python3")).unwrap());
        let found = launchers(&root, &[], &[py].into_iter().collect());
        assert_eq!(found, vec![(Launcher::Script("/usr/bin/R".into()), "ir".to_string())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `argv` is one of the policy's kernel commands, as the kernel judges it: byte for byte, or
/// with a last argument's `RANDOM_TAIL` `?`s standing for as many letters and digits.
pub fn is_kernel_command(commands: &[Vec<String>], argv: &[String]) -> bool {
    commands.iter().any(|c| {
        c.len() == argv.len()
            && c.iter().zip(argv).enumerate().all(|(i, (want, got))| {
                if want == got {
                    return true;
                }
                let Some(stem) = random_stem(want).filter(|_| i + 1 == c.len()) else { return false };
                got.len() == want.len()
                    && got.starts_with(stem)
                    && got[stem.len()..].bytes().all(|b| b.is_ascii_alphanumeric())
            })
    })
}

/// The part before a random tail (`rm -Rf /tmp/Rtmp` of `rm -Rf /tmp/Rtmp??????`).
fn random_stem(arg: &str) -> Option<&str> {
    let stem = arg.strip_suffix(&"?".repeat(guard_abi::RANDOM_TAIL))?;
    (!stem.ends_with('?')).then_some(stem)
}

/// Checks one `kernel_commands` entry: what the kernel can match (`Err`: the message).
pub fn check_command(argv: &[String]) -> Result<(), String> {
    if argv.is_empty() {
        return Err("a command needs at least its program".into());
    }
    let block: usize = argv.iter().map(|a| a.len() + 1).sum();
    if block >= guard_abi::BYTE_KEY_MAX {
        return Err(format!(
            "{block} bytes with their NULs; the kernel matches commands below {} bytes",
            guard_abi::BYTE_KEY_MAX
        ));
    }
    for (i, a) in argv.iter().enumerate() {
        let trailing = a.len() - a.trim_end_matches('?').len();
        if trailing > 1 && (trailing != guard_abi::RANDOM_TAIL || i + 1 != argv.len()) {
            return Err(format!(
                "a run of `?` stands for a random temp-name tail only as the last argument's last {} characters",
                guard_abi::RANDOM_TAIL
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod command_tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_random_tail_matches_letters_and_digits_only() {
        let cmds = vec![v(&["sh", "-c", "rm -Rf /tmp/Rtmp??????"]), v(&["sh", "-c", "uname -a"])];
        assert!(is_kernel_command(&cmds, &v(&["sh", "-c", "uname -a"])));
        assert!(is_kernel_command(&cmds, &v(&["sh", "-c", "rm -Rf /tmp/RtmpAb12Zx"])));
        assert!(!is_kernel_command(&cmds, &v(&["sh", "-c", "rm -Rf /tmp/Rtmp;id;#x"])));
        assert!(!is_kernel_command(&cmds, &v(&["sh", "-c", "rm -Rf /tmp/RtmpAb12Zx9"])));
        assert!(!is_kernel_command(&cmds, &v(&["sh", "-c", "rm -Rf /home/Ab12Zx"])));
        assert!(check_command(&cmds[0]).is_ok());
        assert!(check_command(&v(&["sh", "-c", "rm ??? x"])).is_ok(), "a `?` inside is a literal");
        assert!(check_command(&v(&["sh", "-c", "rm /tmp/x???"])).is_err());
        assert!(check_command(&v(&["sh", "-c", &"x".repeat(64)])).is_err());
    }
}
