//! Seccomp profiles from observed behaviour: record what a notebook's processes call
//! (`recorder`, kernel side), keep it as a [`recording`], merge several users' recordings and
//! [`profile::generate`] an OCI / SPO / KubeSpawner profile that is never looser than Docker's
//! default ([`docker`]), check it with libseccomp ([`apply`]) and review changes ([`diff`]).

pub mod apply;
pub mod arch;
pub mod diff;
pub mod docker;
pub mod drift;
pub mod oci;
pub mod profile;
pub mod recorder;
pub mod recording;
pub mod targets;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use guard_abi::{recorder::SYSCALL_BITS, SyscallSet};

use arch::Arch;
use recorder::Recorder;
use recording::Recording;

/// Names (per architecture) of the calls in a recorder set, and the numbers libseccomp could
/// not name.
pub fn names_of(set: &SyscallSet) -> (BTreeMap<Arch, BTreeSet<String>>, BTreeMap<Arch, BTreeSet<u32>>) {
    let mut names: BTreeMap<Arch, BTreeSet<String>> = BTreeMap::new();
    let mut unnamed: BTreeMap<Arch, BTreeSet<u32>> = BTreeMap::new();
    for arch in Arch::ALL {
        for nr in 0..SYSCALL_BITS {
            if set.contains(arch.recorder_index(), nr) {
                match arch.name_of(nr as u32) {
                    Some(n) => {
                        names.entry(arch).or_default().insert(n);
                    }
                    None => {
                        unnamed.entry(arch).or_default().insert(nr as u32);
                    }
                }
            }
        }
    }
    (names, unnamed)
}

/// Writes `path` through a temporary file and a rename: a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Records `targets` (and, when given, notebooks `rescan` finds later) for `duration`, or
/// until SIGINT/SIGTERM. The recorder is attached only for this call.
pub fn record(
    btf: &Path,
    targets: Vec<targets::RecordTarget>,
    duration: Duration,
    mut rescan: Option<&mut dyn FnMut() -> Vec<targets::RecordTarget>>,
) -> Result<Vec<Recording>> {
    let mut rec = Recorder::load(btf)?;
    if !rec.compat_known {
        tracing::warn!("this kernel has no thread_info.status: 32-bit calls cannot be told apart");
    }
    let started = crate::clock::rfc3339(time::OffsetDateTime::now_utc());
    let mut active: Vec<(u32, targets::RecordTarget, Instant)> = Vec::new();
    for t in targets {
        let slot = rec.add(t.cgroup_id)?;
        active.push((slot, t, Instant::now()));
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    rec.attach()?;
    tracing::info!(targets = active.len(), seconds = duration.as_secs_f64(), "recording");
    let t0 = Instant::now();
    let mut last_scan = Instant::now();
    while t0.elapsed() < duration && !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50).min(duration.saturating_sub(t0.elapsed())));
        if let Some(scan) = rescan.as_mut() {
            if last_scan.elapsed() >= Duration::from_secs(1) {
                last_scan = Instant::now();
                for t in scan() {
                    if rec.slot_of(t.cgroup_id).is_none() {
                        tracing::info!(cgroup = %t.target.cgroup, "recording a new notebook");
                        let slot = rec.add(t.cgroup_id)?;
                        active.push((slot, t, Instant::now()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (slot, t, since) in &active {
        let set = rec.read(*slot)?;
        let (syscalls, unnamed) = names_of(&set);
        let counts = Arch::ALL
            .iter()
            .filter_map(|a| {
                let n = syscalls.get(a).map_or(0, |s| s.len()) + unnamed.get(a).map_or(0, |s| s.len());
                (n > 0).then_some((*a, n))
            })
            .collect();
        out.push(Recording {
            target: t.target.clone(),
            started: started.clone(),
            duration_secs: since.elapsed().as_secs_f64(),
            syscalls,
            counts,
            unnamed,
            out_of_range: set.out_of_range,
        });
    }
    rec.detach();
    Ok(out)
}
