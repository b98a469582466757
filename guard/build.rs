//! Embeds the kernel objects built by `cargo xtask build-ebpf`: the sensor (`guard-ebpf`) and
//! the seccomp recorder (`recorder`).
//!
//! A plain `cargo build`/`clippy` without them still compiles (empty objects are embedded) so
//! tooling works; loading then fails with a message that says how to build them properly.
use std::{env, fs, path::PathBuf};

fn embed(name: &str, env_var: &str) {
    println!("cargo:rerun-if-env-changed={env_var}");
    let object = env::var_os(env_var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("../target/ebpf/bpfel-unknown-none/release")
            .join(name)
    });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join(format!("{name}.o"));
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=no eBPF object at {}: run `cargo xtask build-ebpf` (the agent will refuse to load)",
                object.display()
            );
            fs::write(&out, []).unwrap();
        }
    }
}

fn main() {
    embed("guard-ebpf", "GUARD_EBPF_OBJECT");
    embed("recorder", "GUARD_RECORDER_OBJECT");
}
