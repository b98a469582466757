//! Pinning in bpffs: where maps and links are pinned, how a link is replaced without a gap,
//! pins of another agent layout retired, and everything unpinned (`guard cleanup`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use guard_abi::names;

/// Maps pinned by name (everything but the per-load `.rodata`).
pub(super) const PINNED_MAPS: &[&str] = &[
    names::EVENTS,
    names::LOST,
    names::WATCHED,
    names::ENFORCED,
    names::ALLOWED,
    names::MARKS,
    names::SERVERS,
    names::EGRESS_CG,
    names::EGRESS_RULES,
    names::RING_FILL,
    names::INCARNATIONS,
    names::SCOPES,
    names::KERNEL_COMMANDS,
    names::LAUNCHERS,
    guard_abi::dns::names::DNS_SOCKS,
    guard_abi::dns::names::DNS_NAMES,
    guard_abi::dns::names::DNS_ALLOWED,
    guard_abi::dns::names::DOMAIN_PORTS,
    guard_abi::dns::names::DNS_TTL,
    guard_abi::stratum::names::STRATUM_FLOWS,
];

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub(super) fn check_bpffs(dir: &Path) -> Result<()> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let st = nix::sys::statfs::statfs(&probe).with_context(|| format!("statfs {}", probe.display()))?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!("{} is not on a bpf filesystem: mount -t bpf bpf /sys/fs/bpf (or run with --no-pin)", dir.display());
    }
    Ok(())
}

/// Pins `link` at `path`, replacing a previous agent's link there without a gap: the new one
/// is attached and pinned beside it first, then the old one is unpinned (which detaches it).
pub(super) fn pin_link(link: aya::programs::links::FdLink, path: &Path) -> Result<aya::programs::links::PinnedLink> {
    // bpffs refuses dots in names (reserved for the kernel).
    let fresh =
        path.with_file_name(format!("{}_new", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let _ = std::fs::remove_file(&fresh);
    let pinned = link.pin(&fresh).with_context(|| format!("pinning {}", fresh.display()))?;
    if path.exists() {
        if let Ok(old) = aya::programs::links::PinnedLink::from_pin(path) {
            tracing::info!(link = %path.display(), "adopting: replacing the previous agent's link");
            drop(old.unpin());
        }
        let _ = std::fs::remove_file(path);
    }
    std::fs::rename(&fresh, path).with_context(|| format!("renaming {}", fresh.display()))?;
    // The PinnedLink remembers the old name; reopen it at the final one.
    drop(pinned);
    aya::programs::links::PinnedLink::from_pin(path).with_context(|| format!("reopening {}", path.display()))
}

/// Where this agent's maps are pinned, below the pin directory.
pub fn maps_dir() -> String {
    format!("maps-v{}", guard_abi::PIN_LAYOUT)
}

/// Map pins of another layout (an older or newer agent's): not adopted, since this agent would
/// use them in another shape, but unpinned, with a warning. Their programs keep them until
/// this agent's links replace those programs; enforcement is then rebuilt from discovery.
pub(super) fn retire_other_layouts(dir: &Path) -> Result<()> {
    let current = maps_dir();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name == "maps" || name.starts_with("maps-v")) || name == current {
            continue;
        }
        tracing::warn!(
            maps = %e.path().display(),
            "pinned maps of another agent version's layout are replaced, not adopted: enforcement is rebuilt as notebooks are found"
        );
        for m in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            std::fs::remove_file(m.path()).with_context(|| format!("removing {}", m.path().display()))?;
        }
        let _ = std::fs::remove_dir(e.path());
    }
    Ok(())
}

/// Unpins everything under `dir` (detaching the programs, dropping the state): `guard cleanup`.
///
/// Returns once the links are gone from the kernel. Unlinking a pin whose fd is already closed
/// frees the link from a kernel workqueue, a moment later; so each link is opened first and its
/// last reference dropped here by closing that fd, which detaches synchronously.
pub fn remove_pins(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let mut link_ids = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("links")) {
        for e in entries.flatten() {
            let path = e.path();
            match aya::programs::links::PinnedLink::from_pin(&path) {
                Ok(link) => {
                    let link: aya::programs::links::FdLink =
                        link.unpin().with_context(|| format!("removing {}", path.display()))?;
                    if let Ok(info) = link.info() {
                        link_ids.push(info.id());
                    }
                    drop(link);
                }
                // Not a link (or already detached): still ours to remove.
                Err(_) => std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?,
            }
            n += 1;
        }
        let _ = std::fs::remove_dir(dir.join("links"));
    }
    let map_dirs = std::fs::read_dir(dir).into_iter().flatten().flatten().filter(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name == "maps" || name.starts_with("maps-v")
    });
    for d in map_dirs {
        for e in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            n += 1;
        }
        let _ = std::fs::remove_dir(d.path());
    }
    let _ = std::fs::remove_dir(dir);
    wait_links_gone(&link_ids)?;
    Ok(n)
}

/// Waits (bounded) until none of `ids` is a live link: another holder of the link (a running
/// agent on the same pin directory) would keep it attached, and that must not pass silently.
fn wait_links_gone(ids: &[u32]) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let live: Vec<u32> = aya::programs::loaded_links()
            .filter_map(|l| l.ok())
            .map(|l| l.id())
            .filter(|id| ids.contains(id))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("links {live:?} are still attached: another process holds them (is an agent running?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
