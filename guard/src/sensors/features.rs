//! What this kernel offers, detected at start-up (reported by `guard version`).

use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Features {
    pub kernel: String,
    pub btf: bool,
    pub ring_buffer: bool,
    pub cgroup2_mount: Option<String>,
    pub tracefs: bool,
    /// BPF is in the LSM list (BPF-LSM programs may still be refused: they need trampolines).
    pub bpf_lsm_listed: bool,
}

impl Features {
    /// `cgroup2_mount`: where discovery found cgroup v2 (reported, not probed here).
    pub fn detect(cgroup2_mount: Option<String>) -> Self {
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        Self {
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            // BPF_MAP_TYPE_RINGBUF arrived in 5.8.
            ring_buffer: kernel_at_least(&kernel, 5, 8),
            cgroup2_mount,
            tracefs: Path::new("/sys/kernel/tracing/events").is_dir()
                || Path::new("/sys/kernel/debug/tracing/events").is_dir(),
            bpf_lsm_listed: lsm.split(',').any(|l| l.trim() == "bpf"),
            kernel,
        }
    }
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    matches!((it.next(), it.next()), (Some(a), Some(b)) if (a, b) >= (major, minor))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_compare() {
        assert!(super::kernel_at_least("6.18.44-fc-v669", 5, 8));
        assert!(!super::kernel_at_least("5.4.0-150-generic", 5, 8));
    }
}
