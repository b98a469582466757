//! `guard seccomp …`: record, merge, generate, check, diff.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use guard::{
    discovery::{cgroup::find_cgroup2_mount, kube::parse_selector},
    seccomp::{
        self,
        oci::OciProfile,
        profile::{self, GenerateOptions},
        recording::{Coverage, RecordingFile},
        targets,
    },
};

#[derive(Subcommand)]
pub enum SeccompCmd {
    /// Record the syscalls of a cgroup, a pod or every notebook on the node.
    #[command(verbatim_doc_comment)]
    ///
    /// Examples:
    ///   guard seccomp record --cgroup /system.slice/jupyter-alice.service --duration 600 -o alice.json
    ///   guard seccomp record --pod jhub/jupyter-alice --duration 600 -o alice.json
    ///   guard seccomp record --notebooks --duration 3600 -o node.json
    Record(RecordArgs),
    /// Merge recordings (e.g. several users of one image) into one file with coverage counts.
    Merge {
        #[arg(required = true)]
        recordings: Vec<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Generate a profile from recordings (files of `record`, or of `merge`).
    #[command(verbatim_doc_comment)]
    ///
    /// Examples:
    ///   guard seccomp generate alice.json bob.json --format oci -o notebook.json
    ///   guard seccomp generate *.json --format spo --name notebook --namespace jhub -o sp.yaml
    ///   guard seccomp generate *.json --format kubespawner --localhost-profile profiles/notebook.json -o values.yaml
    Generate(GenerateArgs),
    /// Run CMD under PROFILE (loaded with libseccomp) and exit with its status.
    #[command(verbatim_doc_comment)]
    ///
    /// Example (unshare is refused: prints -1 and the error):
    ///   guard seccomp check notebook.json -- python3 -c 'import ctypes, os; l = ctypes.CDLL(None, use_errno=True); print(l.unshare(0), os.strerror(ctypes.get_errno()))'
    Check {
        profile: PathBuf,
        #[arg(last = true, required = true)]
        cmd: Vec<OsString>,
    },
    /// Show what changes between two profiles: + newly allowed, - no longer allowed, ~ changed.
    Diff { a: PathBuf, b: PathBuf },
    /// Benchmarks only: attach an empty sys_enter program until SIGINT/SIGTERM (the cost floor
    /// any recorder is compared against).
    #[command(hide = true)]
    Floor {
        #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
        btf: PathBuf,
    },
}

#[derive(Args)]
pub struct RecordArgs {
    /// A cgroup (absolute, or relative to the cgroup2 mount); everything below it is recorded.
    #[arg(long, group = "what")]
    pub cgroup: Option<PathBuf>,
    /// A Kubernetes pod, NAMESPACE/NAME (recorded from its pod-level cgroup).
    #[arg(long, group = "what")]
    pub pod: Option<String>,
    /// Every notebook on this node (and those that start while recording), one recording each.
    #[arg(long, group = "what")]
    pub notebooks: bool,
    /// Seconds to record (SIGINT/SIGTERM end it early, keeping what was recorded).
    #[arg(long)]
    pub duration: f64,
    #[arg(short, long)]
    pub output: PathBuf,
    /// This node's name, to find its notebook pods (--notebooks). Default: $NODE_NAME.
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long, default_value = "component=singleuser-server")]
    pub selector: String,
    #[arg(long, default_value = "notebook")]
    pub container: String,
    #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// OCI runtime-spec JSON (kubelet `localhost` profiles, runc, crun, podman).
    Oci,
    /// A Security Profiles Operator SeccompProfile.
    Spo,
    /// A Zero to JupyterHub values snippet (KubeSpawner container_security_context).
    Kubespawner,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(required = true)]
    pub recordings: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "oci")]
    pub format: Format,
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep a syscall only if at least N recordings used it.
    #[arg(long, default_value_t = 1)]
    pub min_coverage: usize,
    /// Allow this call even though Docker's default profile refuses it. Repeatable.
    #[arg(long = "allow-beyond-docker", value_name = "SYSCALL")]
    pub beyond_docker: Vec<String>,
    /// Only recordings of this image.
    #[arg(long)]
    pub image: Option<String>,
    /// SPO: the SeccompProfile's name.
    #[arg(long, default_value = "notebook")]
    pub name: String,
    /// SPO: its namespace (SeccompProfiles are namespaced).
    #[arg(long, default_value = "jhub")]
    pub namespace: String,
    /// kubespawner: the profile's path below kubelet's seccomp root.
    #[arg(long, default_value = "profiles/notebook-guard/notebook.json")]
    pub localhost_profile: String,
}

pub fn run(cmd: SeccompCmd) -> Result<i32> {
    match cmd {
        SeccompCmd::Record(a) => record(a).map(|_| 0),
        SeccompCmd::Merge { recordings, output } => {
            let files = load_all(&recordings)?;
            let all: Vec<_> = files.into_iter().flat_map(|f| f.recordings).collect();
            let merged = Coverage::merge(&all);
            let text = serde_json::to_string_pretty(&MergedFile { format: MERGED_FORMAT.into(), coverage: merged })?;
            seccomp::write_atomically(&output, text.as_bytes())?;
            println!("{}: {} recordings merged", output.display(), all.len());
            Ok(0)
        }
        SeccompCmd::Generate(a) => generate(a).map(|_| 0),
        SeccompCmd::Check { profile, cmd } => {
            let p = load_profile(&profile)?;
            seccomp::apply::exec_under(&p, &cmd)?;
            Ok(127)
        }
        SeccompCmd::Floor { btf } => {
            let mut empty = seccomp::recorder::Recorder::load_empty(&btf)?;
            empty.attach()?;
            eprintln!("empty sys_enter program attached");
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGINT);
            set.add(nix::sys::signal::Signal::SIGTERM);
            set.thread_block()?;
            set.wait()?;
            Ok(0)
        }
        SeccompCmd::Diff { a, b } => {
            let lines = seccomp::diff::diff(&load_profile(&a)?, &load_profile(&b)?);
            for l in &lines {
                println!("{l}");
            }
            if lines.is_empty() {
                println!("identical: {} and {} allow the same calls", a.display(), b.display());
            }
            // diff(1) convention: 1 when they differ.
            Ok(if lines.is_empty() { 0 } else { 1 })
        }
    }
}

const MERGED_FORMAT: &str = "notebook-guard/seccomp-coverage/v1";

#[derive(serde::Serialize, serde::Deserialize)]
struct MergedFile {
    format: String,
    coverage: Coverage,
}

/// The inputs of `generate`: recordings, and coverage `merge` made (which `--image` cannot
/// filter: a merged file no longer says which recording was of which image).
fn load_coverage(paths: &[PathBuf], image: Option<&str>) -> Result<(Coverage, usize)> {
    let (mut recordings, mut merged) = (Vec::new(), Vec::new());
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let is_merged = serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v.get("format").and_then(|f| f.as_str()) == Some(MERGED_FORMAT));
        if !is_merged {
            recordings.extend(RecordingFile::load(p)?.recordings);
            continue;
        }
        if image.is_some() {
            bail!("{}: a merged file cannot be filtered by --image; generate from the recordings", p.display());
        }
        let de = &mut serde_json::Deserializer::from_str(&text);
        let m: MergedFile = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: {}: {}", p.display(), e.path(), e.inner()))?;
        merged.push(m.coverage);
    }
    recordings.retain(|r| image.is_none() || r.target.image.as_deref() == image);
    let mut cov = Coverage::merge(&recordings);
    for m in &merged {
        cov.add(m);
    }
    Ok((cov.clone(), cov.recordings))
}

fn record(a: RecordArgs) -> Result<()> {
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration {}: must be a positive number of seconds", a.duration);
    }
    let mount = find_cgroup2_mount()?;
    let selector = parse_selector(&a.selector).map_err(|e| anyhow::anyhow!("--selector: {e}"))?;
    let node = a.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok());
    let kube = node.as_deref().map(|node| targets::KubeScope {
        node,
        selector: selector.as_slice(),
        container: a.container.as_str(),
    });
    let initial = match (&a.cgroup, &a.pod, a.notebooks) {
        (Some(c), _, _) => vec![targets::from_cgroup(&mount, c)?],
        (_, Some(p), _) => vec![targets::from_pod(&mount, p, &a.container)?],
        (_, _, true) => targets::notebooks(&mount, kube)?,
        _ => bail!("say what to record: --cgroup PATH, --pod NAMESPACE/NAME or --notebooks"),
    };
    let mut rescan = || targets::notebooks(&mount, kube).unwrap_or_default();
    let rescan: Option<&mut dyn FnMut() -> Vec<targets::RecordTarget>> =
        if a.notebooks { Some(&mut rescan) } else { None };
    let recs = seccomp::record(&a.btf, initial, Duration::from_secs_f64(a.duration), rescan)?;
    for r in &recs {
        let counts: Vec<String> = r.counts.iter().map(|(a, n)| format!("{a}: {n}")).collect();
        eprintln!("{}: {} ({})", r.target.cgroup, r.target.user.as_deref().unwrap_or("-"), counts.join(", "));
    }
    RecordingFile::new(recs).save(&a.output)?;
    println!("{}: written", a.output.display());
    Ok(())
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<RecordingFile>> {
    paths.iter().map(|p| RecordingFile::load(p)).collect()
}

fn load_profile(path: &Path) -> Result<OciProfile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let p: OciProfile = serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))?;
    let problems = profile::validate(&p);
    if !problems.is_empty() {
        bail!("{}:\n  {}", path.display(), problems.join("\n  "));
    }
    Ok(p)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (cov, n) = load_coverage(&a.recordings, a.image.as_deref())?;
    if n == 0 {
        bail!("no recordings to generate from{}", a.image.map(|i| format!(" (image {i})")).unwrap_or_default());
    }
    let beyond: BTreeSet<String> = a.beyond_docker.iter().cloned().collect();
    for n in &beyond {
        if !seccomp::arch::Arch::ALL.iter().any(|arch| arch.knows(n)) {
            bail!("--allow-beyond-docker {n}: not a syscall libseccomp knows");
        }
    }
    let opts = GenerateOptions { min_coverage: a.min_coverage, beyond_docker: beyond, ..Default::default() };
    let g = profile::generate(&cov, &opts);
    if !g.refused_by_docker.is_empty() {
        eprintln!(
            "left out (Docker's default profile refuses them; --allow-beyond-docker NAME to keep one): {}",
            g.refused_by_docker.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if !g.below_coverage.is_empty() {
        eprintln!("left out (used by fewer than {} recordings): {}", a.min_coverage, join(&g.below_coverage));
    }
    for (arch, nrs) in &g.unnamed {
        eprintln!("{arch}: numbers libseccomp cannot name (not in the profile): {nrs:?}");
    }
    let problems = profile::validate(&g.profile);
    if !problems.is_empty() {
        bail!("the generated profile does not validate:\n  {}", problems.join("\n  "));
    }
    let text = match a.format {
        Format::Oci => serde_json::to_string_pretty(&g.profile)?,
        Format::Spo => serde_yaml_ng::to_string(&profile::to_spo(&g.profile, &a.name, &a.namespace))?,
        Format::Kubespawner => {
            let mut s = format!(
                "# notebook-guard: put {} (the OCI profile) at <kubelet root>/seccomp/{} on every notebook node.\n",
                a.output.with_extension("json").display(),
                a.localhost_profile
            );
            s.push_str(&serde_yaml_ng::to_string(&profile::to_kubespawner_values(&a.localhost_profile))?);
            s
        }
    };
    seccomp::write_atomically(&a.output, text.as_bytes())?;
    let allowed = profile::allowed_names(&g.profile).len();
    println!(
        "{}: {allowed} syscalls allowed, from {} recordings ({} users)",
        a.output.display(),
        cov.recordings,
        cov.users.len()
    );
    Ok(())
}

fn join(s: &BTreeSet<String>) -> String {
    s.iter().cloned().collect::<Vec<_>>().join(", ")
}
