//! The eBPF toolchain: `rust-src` for `-Z build-std=core`, and `bpf-linker` built against the
//! toolchain's own libLLVM. Cheap when both are there.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cargo, output, run, workspace_root, BPF_LINKER_VERSION};

fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?.trim()))
}

pub fn ensure_rust_src() -> Result<()> {
    let src = sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// The toolchain's LLVM major version, from `rustc -vV` ("LLVM version: 22.1.2").
fn llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").arg("-vV"))?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV does not name its LLVM version")?;
    line.split('.').next().unwrap_or("").parse().with_context(|| format!("LLVM version {line:?}"))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// bpf-linker must use the very LLVM that rustc emits bitcode with, so it is built against the
/// toolchain's own libLLVM: a prefix directory whose `lib/libLLVM.so` links to it, plus an
/// rpath so the installed binary finds that library at run time.
pub fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let lib = sysroot()?.join("lib");
    let real = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // `libLLVM-NN-*.so` is a linker script; the real shared object is `libLLVM.so.NN.*`.
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).with_context(|| format!("linking {}", link.display()))?;

    let major = llvm_major()?;
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {}", real.display());
    let mut cmd = cargo();
    cmd.args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env(format!("LLVM_SYS_{major}1_PREFIX"), &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib.display()));
    run(&mut cmd)?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}
