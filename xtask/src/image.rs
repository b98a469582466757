//! The notebook image the container tests run: a Debian root file system (mmdebstrap) with
//! jupyter_server and ipykernel from PyPI in a venv at /opt/conda that belongs to uid 1000,
//! group 100 — the shape of docker-stacks images, where the notebook user owns the
//! interpreter tree. Built once into target/images and reused.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::run;

/// Bump when the recipe changes: a cached image of another recipe is built again.
const RECIPE: &str =
    "notebook-1: bookworm minbase, python3 venv --copies at /opt/conda (1000:100), jupyter_server, ipykernel";

pub fn ensure_notebook_image(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/images/notebook");
    let rootfs = dir.join("rootfs");
    if fs::read_to_string(dir.join("recipe")).is_ok_and(|r| r == RECIPE) {
        return Ok(rootfs);
    }
    eprintln!("xtask: building the notebook image in {} (about a minute)", dir.display());
    let tmp = root.join("target/images/notebook.tmp");
    // A build that was interrupted may have left its /proc mounted.
    let _ = Command::new("umount").arg(tmp.join("rootfs/proc")).stderr(std::process::Stdio::null()).status();
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let fs_tmp = tmp.join("rootfs");
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm"])
        .arg(&fs_tmp))
    .context("mmdebstrap (Debian's package; cargo xtask test installs it)")?;
    // pip inside the root reaches PyPI with the host's certificates and pip settings.
    for f in ["etc/ssl/certs/ca-certificates.crt", "etc/pip.conf", "etc/resolv.conf"] {
        let host = Path::new("/").join(f);
        if host.exists() {
            fs::copy(&host, fs_tmp.join(f)).with_context(|| format!("copying {}", host.display()))?;
        }
    }
    run(Command::new("mount").args(["-t", "proc", "proc"]).arg(fs_tmp.join("proc")))?;
    let chroot = |args: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(&fs_tmp).args(args).env_remove("PIP_FIND_LINKS");
        run(&mut c)
    };
    let built = chroot(&["/usr/bin/python3", "-m", "venv", "--copies", "/opt/conda"]).and_then(|_| {
        chroot(&[
            "/opt/conda/bin/pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "jupyter_server",
            "ipykernel",
        ])
    });
    let _ = Command::new("umount").arg(fs_tmp.join("proc")).status();
    built?;
    // docker-stacks: NB_USER jovyan (1000), group users (100), owner of /opt/conda and home.
    let mut passwd = fs::read_to_string(fs_tmp.join("etc/passwd"))?;
    passwd.push_str("jovyan:x:1000:100::/home/jovyan:/bin/bash\n");
    fs::write(fs_tmp.join("etc/passwd"), passwd)?;
    fs::create_dir_all(fs_tmp.join("home/jovyan"))?;
    run(Command::new("chown").args(["-R", "1000:100"]).arg(fs_tmp.join("opt/conda")).arg(fs_tmp.join("home/jovyan")))?;
    run(Command::new("chmod").args(["-R", "g+w"]).arg(fs_tmp.join("opt/conda")))?;
    fs::write(tmp.join("recipe"), RECIPE)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).context("moving the image into place")?;
    Ok(rootfs)
}
