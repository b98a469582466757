//! `cargo xtask`: everything needed to build, run and test notebook-guard on a fresh machine.
//!
//! The eBPF crate needs `rust-src` (for `-Z build-std=core`) and `bpf-linker` built against the
//! toolchain's own libLLVM; `setup` provides both and is cheap when they are already there.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use deps::{ensure_hub, ensure_packages, ensure_python_env, ensure_test_packages, BENCH_PEERS, BUILD_PACKAGES};
use toolchain::{ensure_bpf_linker, ensure_rust_src};

mod bench;
mod deps;
mod helm;
mod image;
mod kernels;
mod toolchain;

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TARGET: &str = "bpfel-unknown-none";

#[derive(Parser)]
#[command(about = "Build, run and test notebook-guard")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs (rust-src, bpf-linker) and mount tracefs. Idempotent.
    Setup,
    /// Build the kernel programs (guard-ebpf) into target/ebpf.
    BuildEbpf,
    /// Build the kernel programs and the agent (release).
    Build,
    /// Build everything, then run all tests (privileged ones need root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build (release), then measure the guard's overhead, loss, latency and footprint against a
    /// baseline in the same run; writes target/bench/results.json, and BENCHMARKS.md when every
    /// section ran (needs root).
    Bench {
        /// Every table in about a tenth of the time: fewer rounds, shorter waits; its intervals
        /// are held against the last full run's.
        #[arg(long)]
        quick: bool,
        /// Sections to run (default: all): storms, recorder, peers, loss, latency, files, packets,
        /// footprint, scale.
        sections: Vec<String>,
    },
    /// Load generator used by `bench` (runs inside a chosen cgroup).
    #[command(hide = true)]
    BenchLoad {
        kind: String,
        n: u64,
        /// Operations per second to aim for (0: as fast as possible).
        #[arg(default_value_t = 0)]
        rate: u64,
    },
    /// The binary that ships: the release build without debug info (target/dist/guard).
    Dist,
    /// The exec and egress tests on other kernels (Debian's 6.1 and 6.12), in qemu; part of
    /// `test` when it runs everything.
    Kernels {
        /// Only these kernels (e.g. 6.1); all by default.
        labels: Vec<String>,
    },
    /// Build, then start `guard run` with the embedded default policy (needs root).
    Run {
        /// Arguments passed to `guard run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => {
            setup()?;
            build_ebpf()
        }
        Cmd::Build => {
            setup()?;
            build_ebpf()?;
            build_agent(true)
        }
        Cmd::Dist => {
            setup()?;
            build_ebpf()?;
            run(cargo().args(["build", "--package", "guard", "--profile", "dist"]))?;
            let bin = workspace_root().join("target/dist/guard");
            let size = fs::metadata(&bin).with_context(|| format!("{}", bin.display()))?.len();
            eprintln!("xtask: {} is {:.1} MiB", bin.display(), size as f64 / (1 << 20) as f64);
            Ok(())
        }
        Cmd::Test { args } => {
            setup()?;
            build_ebpf()?;
            build_agent(false)?;
            ensure_test_packages()?;
            let python = ensure_python_env()?;
            let (hubenv, chp) = ensure_hub()?;
            let image = image::ensure_notebook_image(&workspace_root())?;
            let helm = helm::ensure_helm(&workspace_root(), &python)?;
            let mut cmd = cargo();
            cmd.args(["test", "--workspace"]).args(&args);
            cmd.env("GUARD_HUB_ENV", hubenv).env("GUARD_CHP", chp).env("GUARD_NOTEBOOK_IMAGE", image);
            cmd.env("GUARD_BIN", workspace_root().join("target/debug/guard"));
            cmd.env("GUARD_TEST_PYTHON", &python);
            cmd.env("GUARD_HELM", &helm);
            // The tests make kubelet- and systemd-shaped cgroups; what they leave empty goes.
            let cgroups_before = cgroup_dirs();
            let result = run(&mut cmd);
            remove_new_empty_cgroups(&cgroups_before);
            result?;
            // The whole suite (no filter): the kernel programs on the other kernels too.
            if args.is_empty() {
                kernels::run(&test_env(&python, &helm), &[])?;
            }
            Ok(())
        }
        Cmd::Kernels { labels } => {
            setup()?;
            build_ebpf()?;
            build_agent(false)?;
            ensure_test_packages()?;
            let python = ensure_python_env()?;
            let helm = helm::ensure_helm(&workspace_root(), &python)?;
            kernels::run(&test_env(&python, &helm), &labels)
        }
        Cmd::Bench { quick, sections } => {
            setup()?;
            // Peers measured in the same run, where they install here.
            ensure_packages(BENCH_PEERS)?;
            build_ebpf()?;
            // What ships is measured: the dist build (its memory is part of the results).
            run(cargo().args(["build", "--package", "guard", "--profile", "dist"]))?;
            bench::bench(&workspace_root(), &workspace_root().join("target/dist/guard"), &sections, quick)
        }
        Cmd::BenchLoad { kind, n, rate } => bench::run_load(&kind, n, rate),
        Cmd::Run { args } => {
            setup()?;
            build_ebpf()?;
            build_agent(true)?;
            let mut cmd = Command::new(workspace_root().join("target/release/guard"));
            cmd.arg("run").args(&args);
            run(&mut cmd)
        }
    }
}

/// The environment the tests run with, as a kernel-matrix guest needs it.
fn test_env(python: &Path, helm: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("GUARD_BIN", workspace_root().join("target/debug/guard")),
        ("GUARD_TEST_PYTHON", python.to_path_buf()),
        ("GUARD_HELM", helm.to_path_buf()),
    ]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn setup() -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    mount_tracefs();
    mount_bpffs();
    Ok(())
}

/// Classic tracepoints need tracefs; raw tracepoints do not, but tools and later sensors do.
fn mount_tracefs() {
    let t = Path::new("/sys/kernel/tracing");
    if t.join("events").is_dir() || !nix_is_root() {
        return;
    }
    let status = Command::new("mount").args(["-t", "tracefs", "tracefs"]).arg(t).status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("xtask: warning: could not mount tracefs at {}", t.display());
    }
}

/// Pinned programs and maps (enforcement that outlives an agent restart) live on bpffs.
fn mount_bpffs() {
    let b = Path::new("/sys/fs/bpf");
    let mounted = fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")))
        .unwrap_or(false);
    if mounted || !nix_is_root() {
        return;
    }
    let _ = fs::create_dir_all(b);
    let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(b).status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("xtask: warning: could not mount bpffs at {}", b.display());
    }
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    let mut cmd = cargo();
    cmd.current_dir(root.join("guard-ebpf"))
        .args(["build", "--release", "--target", BPF_TARGET, "-Z", "build-std=core"])
        // The workspace pins a stable toolchain; build-std is a nightly flag.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root.join("target/ebpf"))
        // Flags meant for the host must not leak into the BPF build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    run(&mut cmd).context("building guard-ebpf")
}

fn build_agent(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "guard"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

/// The cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Directories below the cgroup2 mount, two levels deep.
fn cgroup_dirs() -> Vec<PathBuf> {
    let Some(root) = cgroup2_mount() else { return vec![] };
    let mut out = Vec::new();
    for a in fs::read_dir(&root).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
        out.push(a.path());
        out.extend(fs::read_dir(a.path()).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    out
}

/// Removes the cgroups made since `before` that nothing uses (rmdir refuses the others).
fn remove_new_empty_cgroups(before: &[PathBuf]) {
    let mut new: Vec<PathBuf> = cgroup_dirs().into_iter().filter(|d| !before.contains(d)).collect();
    // Deepest first, so a parent is empty by the time it is tried.
    new.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in new {
        let _ = fs::remove_dir(&d);
    }
}
