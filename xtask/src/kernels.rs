//! `cargo xtask kernels`: the exec-sensor and egress tests on other kernels than the host's.
//!
//! Each kernel is a Debian package (bookworm's 6.1 and its backported 6.12), booted in qemu
//! (software emulation: nested KVM is not reliable on CI machines) from a small initramfs
//! (busybox and the kernel's 9p and veth modules) that mounts the host's root read-only over
//! virtio-9p and runs the already built test binaries, as root, with the guard's own programs
//! loaded into that kernel. The verifier of each kernel checks the programs; the tests check
//! what they do.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// (label, Debian metapackage that depends on the kernel image of that series).
pub const KERNELS: &[(&str, &str)] = &[("6.1", "linux-image-amd64"), ("6.12", "linux-image-6.12-amd64")];

/// The integration tests run on each kernel: everything the kernel programs do, without the
/// real-container and hub tiers (they test discovery and attribution, not the kernel).
const TESTS: &[&str] = &["exec_sensor", "egress"];

/// Left out in the guest: a real Jupyter server and kernel take longer than their own
/// readiness timeouts under software emulation. What they check of the kernel (egress rules
/// written for the hub's address) the other egress tests check too.
const SKIP: &[&str] = &["a_notebook_reaches_its_hub_at_a_private_address_in_every_mode"];

/// Modules the initramfs loads, in dependency order (paths below `kernel/`).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko",
    "net/9p/9pnet.ko",
    "net/9p/9pnet_virtio.ko",
    "fs/9p/9p.ko",
    "drivers/net/veth.ko",
];

/// A guest test run may take this long (software emulation is some five times slower).
const GUEST_LIMIT: Duration = Duration::from_secs(1200);

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
# In passes: a module whose dependency comes later in the list loads on the next one.
for pass in 1 2 3 4; do
  for m in $($B cat /mods/order); do
    n=${m%.ko}
    $B test -e /sys/module/$n || $B insmod /mods/$m 2>/dev/null
  done
done
for m in $($B cat /mods/order); do n=${m%.ko}; $B test -e /sys/module/$n || echo "GUEST: $n did not load"; done
# The virtio device is probed asynchronously after its driver loads.
for i in $($B seq 1 100); do
  $B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host 2>/dev/null && break
  $B sleep 0.1
done
$B test -e /host/bin/sh || echo "GUEST: mounting the host failed"
H=/host
$B mount -t proc proc $H/proc
$B mount -t sysfs sys $H/sys
$B mount -t devtmpfs dev $H/dev
$B mount -t tmpfs tmp $H/tmp
$B mount -t tmpfs run $H/run
$B mount -t cgroup2 none $H/sys/fs/cgroup
$B mount -t bpf bpf $H/sys/fs/bpf
$B mount -t tracefs tracefs $H/sys/kernel/tracing
$B ip link set lo up 2>/dev/null
echo "GUEST: kernel $($B uname -r)"
S=$($B sed -n 's/.*guardscript=\([^ ]*\).*/\1/p' /proc/cmdline)
$B chroot $H /bin/sh "$S"
echo "GUEST: done $?"
$B poweroff -f
"#;

fn root() -> PathBuf {
    super::workspace_root()
}

/// The concrete kernel package a metapackage points at, downloaded and unpacked.
fn fetch(meta: &str) -> Result<PathBuf> {
    let dir = root().join("target/kernels");
    fs::create_dir_all(&dir)?;
    let out = Command::new("apt-cache").args(["depends", "--no-recommends", "--no-suggests", meta]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && !p.contains("-dbg"))
        .with_context(|| format!("apt-cache depends {meta}: no kernel image in:\n{text}"))?
        .to_string();
    let unpacked = dir.join(&pkg);
    if unpacked.join("boot").is_dir() {
        return Ok(unpacked);
    }
    let status = Command::new("apt-get").args(["download", &pkg]).current_dir(&dir).status()?;
    if !status.success() {
        bail!("apt-get download {pkg} failed");
    }
    let deb = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_"))))
        .with_context(|| format!("{pkg}'s .deb not found in {}", dir.display()))?;
    let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked).status()?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    let _ = fs::remove_file(&deb);
    Ok(unpacked)
}

fn only_entry(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)?.flatten().map(|e| e.path()).next().with_context(|| format!("{} is empty", dir.display()))
}

/// A gzip'd cpio initramfs with busybox, the kernel's modules and INIT.
fn initramfs(kernel: &Path, out: &Path) -> Result<()> {
    let tree = out.with_extension("d");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "mods", "host", "proc", "sys", "dev"] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).context("busybox-static is needed (/bin/busybox)")?;
    let mods = only_entry(&kernel.join("lib/modules"))?.join("kernel");
    let mut order = String::new();
    for m in MODULES {
        let name = Path::new(m).file_name().context("module name")?;
        // Plain, or xz-compressed (6.12); fscache is part of netfs from 6.4 on.
        let src = mods.join(m);
        let xz = mods.join(format!("{m}.xz"));
        if src.exists() {
            fs::copy(&src, tree.join("mods").join(name))?;
        } else if xz.exists() {
            let out = Command::new("xz").arg("-dc").arg(&xz).output().context("xz (xz-utils)")?;
            if !out.status.success() {
                bail!("decompressing {}", xz.display());
            }
            fs::write(tree.join("mods").join(name), out.stdout)?;
        } else {
            continue;
        }
        order.push_str(&format!("{}\n", name.to_string_lossy()));
    }
    fs::write(tree.join("mods/order"), order)?;
    fs::write(tree.join("init"), INIT)?;
    fs::set_permissions(tree.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let script = format!(
        "cd {} && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
        tree.display(),
        out.display()
    );
    if !Command::new("sh").args(["-c", &script]).status()?.success() {
        bail!("making {}", out.display());
    }
    Ok(())
}

/// The test binaries `cargo test` built, by target name.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = super::cargo();
    cmd.args(["test", "-p", "guard-tests", "--no-run", "--message-format=json"]);
    for t in TESTS {
        cmd.args(["--test", t]);
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    let mut found = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact" {
            if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
                if v["profile"]["test"] == true && TESTS.contains(&name) {
                    found.push((name.to_string(), PathBuf::from(exe)));
                }
            }
        }
    }
    if found.len() != TESTS.len() {
        bail!("expected the test binaries {TESTS:?}, cargo built {found:?}");
    }
    Ok(found)
}

/// Boots `label`'s kernel and runs the tests in it; Ok when every test passed.
fn run_on(label: &str, meta: &str, env: &[(&str, PathBuf)], bins: &[(String, PathBuf)]) -> Result<usize> {
    let kernel = fetch(meta)?;
    let vmlinuz = fs::read_dir(kernel.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no vmlinuz in the package")?;
    let dir = root().join("target/kernels");
    let initrd = dir.join(format!("initrd-{label}.gz"));
    initramfs(&kernel, &initrd)?;
    let mut script = format!("cd {}\nexport CI=true GUARD_TEST_TIME_SCALE=5\n", root().display());
    for (k, v) in env {
        script.push_str(&format!("export {k}={}\n", v.display()));
    }
    for (name, exe) in bins {
        script.push_str(&format!(
            "echo 'GUEST: running {name}'\n{} --test-threads=2 --color never {} 2>&1\necho \"GUEST: {name} exited $?\"\n",
            exe.display(),
            SKIP.iter().map(|t| format!("--skip {t}")).collect::<Vec<_>>().join(" ")
        ));
    }
    let script_path = dir.join(format!("run-{label}.sh"));
    fs::write(&script_path, script)?;
    eprintln!("xtask: kernel {label}: booting {} (software emulation)", vmlinuz.display());
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 guardscript={}", script_path.display()))
        .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let start = Instant::now();
    let (mut passed, mut results, mut failed, mut kernel_seen) = (0usize, 0usize, false, None);
    let mut log = fs::File::create(dir.join(format!("guest-{label}.log")))?;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        let _ = writeln!(log, "{line}");
        if start.elapsed() > GUEST_LIMIT {
            let _ = child.kill();
            bail!("kernel {label}: the guest ran past {} s", GUEST_LIMIT.as_secs());
        }
        // The firmware's screen codes may share the first line.
        if let Some(k) = line.split("GUEST: kernel ").nth(1) {
            kernel_seen = Some(k.trim().to_string());
        }
        if line.contains("GUEST:") || line.starts_with("test ") || line.contains("panicked") {
            eprintln!("[kernel {label}] {line}");
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            results += 1;
            failed |= !rest.starts_with("ok.");
            passed += rest.split_whitespace().nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        }
        if line.contains("SKIP ") || line.contains(" ignored;") && !line.contains(" 0 ignored;") {
            failed = true;
        }
    }
    let _ = child.wait();
    let Some(seen) = kernel_seen else {
        bail!("kernel {label}: the guest never started its tests (see target/kernels/guest-{label}.log)")
    };
    if failed || results != bins.len() || passed == 0 {
        bail!("kernel {seen}: {results} of {} test binaries reported, {passed} tests passed, some failed or were skipped (target/kernels/guest-{label}.log)", bins.len());
    }
    eprintln!("xtask: kernel {seen}: {passed} tests passed");
    Ok(passed)
}

/// Runs the kernel matrix; `env` is what the host's test run gets.
pub fn run(env: &[(&str, PathBuf)], only: &[String]) -> Result<()> {
    for o in only {
        if !KERNELS.iter().any(|(l, _)| l == o) {
            bail!("unknown kernel {o:?} (known: {})", KERNELS.iter().map(|k| k.0).collect::<Vec<_>>().join(", "));
        }
    }
    let bins = test_binaries()?;
    let mut failures = Vec::new();
    for (label, meta) in KERNELS.iter().filter(|(l, _)| only.is_empty() || only.iter().any(|o| o == l)) {
        if let Err(e) = run_on(label, meta, env, &bins) {
            eprintln!("xtask: {e:#}");
            failures.push(label.to_string());
        }
    }
    if !failures.is_empty() {
        bail!("the kernel matrix failed on {}", failures.join(", "));
    }
    Ok(())
}
