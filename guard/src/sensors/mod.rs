//! Kernel probes: load the eBPF object, attach it, and read what it reports.
//!
//! `process` is the process-lifecycle sensor (exec, fork, exit); `ring` drains its ring buffer
//! into the agent; `decode` turns records into events; `offsets` makes the object portable. `files` is the
//! file sensor (fanotify directory marks) for persistence locations.

pub mod decode;
pub mod features;
pub mod files;
pub mod maps;
pub mod offsets;
pub mod pins;
pub mod process;
pub mod ring;

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf.o"));

/// The seccomp recorder object (attached only while recording; see `seccomp::recorder`).
pub static RECORDER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/recorder.o"));
