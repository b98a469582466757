//! Embeds the kernel object built by `cargo xtask build-ebpf`.
//!
//! A plain `cargo build`/`clippy` without it still compiles (an empty object is embedded) so
//! tooling works; loading then fails with a message that says how to build it properly.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=GUARD_EBPF_OBJECT");
    let object = env::var_os("GUARD_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("../target/ebpf/bpfel-unknown-none/release/guard-ebpf")
    });
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("guard-ebpf.o");
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
