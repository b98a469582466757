//! Location classes (`helpers[].in`) resolved in one notebook root: which directories are
//! "the system", "a program's private files", "a trusted Python environment" and "its
//! site-packages" there, and which files a helper's program names lead to in them.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::{Path, PathBuf},
};

use super::{
    helpers::{Helper, Location},
    identity::{Root, SYSTEM_DIRS},
};

/// Where programs keep their private executables (git-core's helpers, gcc's cc1).
pub const LIBEXEC_DIRS: &[&str] = &["/usr/libexec", "/usr/local/libexec", "/usr/lib"];

/// The directories of each location class in one root.
pub struct LocationDirs {
    system: Vec<PathBuf>,
    libexec: Vec<PathBuf>,
    python_env: Vec<PathBuf>,
    site_packages: Vec<PathBuf>,
    /// Directory listings made so far (a name glob lists a directory once, not once per name).
    listed: HashMap<PathBuf, Vec<OsString>>,
}

impl LocationDirs {
    /// `interpreters`: the paths (inside the root) that led to trusted Python; their
    /// directories are the environments' `bin`, their prefixes hold the site-packages.
    pub fn of(root: &Root, interpreters: &[&Path]) -> Self {
        let mut python_env: Vec<PathBuf> =
            interpreters.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
        python_env.sort();
        python_env.dedup();
        let mut site_packages = Vec::new();
        for bin in python_env.iter().filter(|d| d.ends_with("bin")) {
            let Some(prefix) = bin.parent() else { continue };
            let prefix = prefix.display().to_string();
            let prefix = prefix.trim_end_matches('/');
            for pat in ["lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages"] {
                site_packages.extend(
                    root.glob(&format!("{prefix}/{pat}"))
                        .into_iter()
                        .filter(|d| root.stat(d).is_ok_and(|m| m.is_dir())),
                );
            }
        }
        site_packages.sort();
        site_packages.dedup();
        let dirs = |list: &[&str]| list.iter().map(PathBuf::from).collect();
        Self {
            system: dirs(SYSTEM_DIRS),
            libexec: dirs(LIBEXEC_DIRS),
            python_env,
            site_packages,
            listed: HashMap::new(),
        }
    }

    pub fn dirs(&self, l: Location) -> &[PathBuf] {
        match l {
            Location::System => &self.system,
            Location::Libexec => &self.libexec,
            Location::PythonEnv => &self.python_env,
            Location::SitePackages => &self.site_packages,
        }
    }

    /// Paths inside the root that `h.programs` name in its location classes (callers stat
    /// them: a literal name need not exist).
    pub fn programs(&mut self, root: &Root, h: &Helper) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for &l in &h.locations {
            for dir in self.dirs(l).to_vec() {
                for prog in &h.programs {
                    let wild = prog.contains(['*', '?', '[']);
                    if !wild {
                        out.push(dir.join(prog));
                    } else if prog.contains('/') {
                        out.extend(root.glob(&format!("{}/{prog}", dir.display())));
                    } else if let Ok(pat) = globset::Glob::new(prog).map(|g| g.compile_matcher()) {
                        let names = self.listed.entry(dir.clone()).or_insert_with(|| list(root, &dir));
                        out.extend(
                            names.iter().filter(|n| n.to_str().is_some_and(|n| pat.is_match(n))).map(|n| dir.join(n)),
                        );
                    }
                }
            }
        }
        out
    }
}

fn list(root: &Root, dir: &Path) -> Vec<OsString> {
    root.list(dir).map(|(_, entries)| entries.flatten().map(|e| e.file_name()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;
    use crate::{
        policy::{identity::RootIdentities, Policy},
        sensors::decode::FileId,
    };

    #[test]
    fn helpers_are_found_by_name_in_their_location_classes_and_only_where_sealed() {
        let dir = std::env::temp_dir().join(format!("guard-locations-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let site = dir.join("opt/conda/lib/python3.11/site-packages");
        for d in ["usr/bin", "usr/lib/git-core", "usr/libexec/gcc/x86_64-linux-gnu/12", "opt/conda/bin", "srv/x/bin"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::create_dir_all(site.join("imageio_ffmpeg/binaries")).unwrap();
        let put = |rel: &str| {
            let p = dir.join(rel);
            fs::write(&p, format!("#!/bin/true {rel}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            FileId::of(&fs::metadata(&p).unwrap())
        };
        put("opt/conda/bin/python3.11");
        let uname = put("usr/bin/uname");
        let remote = put("usr/lib/git-core/git-remote-https");
        let cc1 = put("usr/libexec/gcc/x86_64-linux-gnu/12/cc1");
        let ffmpeg = put("opt/conda/lib/python3.11/site-packages/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v7.0.2");
        let conda_git = put("opt/conda/bin/git");
        // Not an env of a trusted interpreter: its git is nobody's helper.
        let stray_git = put("srv/x/bin/git");
        // Written by the notebook's user (group/other-writable here): never a helper.
        let dot = put("usr/bin/dot");
        fs::set_permissions(dir.join("usr/bin/dot"), fs::Permissions::from_mode(0o777)).unwrap();

        // A helper that is a `#!` script is known by its path, where every directory is sealed.
        let lsb = put("usr/bin/lsb_release");
        fs::create_dir_all(dir.join("usr/local/bin")).unwrap();
        fs::set_permissions(dir.join("usr/local/bin"), fs::Permissions::from_mode(0o777)).unwrap();
        put("usr/local/bin/lsb_release");

        let (_, root) = Root::open(&dir).unwrap();
        let policy = Policy::default_policy();
        let ids = RootIdentities::resolve(root, &policy);
        let helper = |id: &FileId| -> Vec<&str> {
            ids.helpers
                .get(id)
                .map(|hs| hs.iter().map(|&h| policy.helpers[h].name.as_str()).collect())
                .unwrap_or_default()
        };
        assert_eq!(helper(&uname), ["platform-uname"]);
        assert_eq!(helper(&remote), ["git-core-helpers"]);
        assert_eq!(helper(&cc1), ["c-toolchain"]);
        assert_eq!(helper(&ffmpeg), ["ffmpeg"]);
        assert_eq!(helper(&conda_git), ["git"]);
        assert!(helper(&stray_git).is_empty());
        assert!(helper(&dot).is_empty(), "a file the user could have written is no helper");
        assert_eq!(helper(&lsb), ["lsb-release"]);
        let scripts: Vec<String> = ids.helper_scripts.keys().map(|p| p.display().to_string()).collect();
        assert!(scripts.contains(&"/usr/bin/lsb_release".to_string()), "{scripts:?}");
        assert!(
            !scripts.contains(&"/usr/local/bin/lsb_release".to_string()),
            "in a dir its user may change: {scripts:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
