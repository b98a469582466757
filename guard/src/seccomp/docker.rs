//! What Docker's default seccomp profile (moby `profiles/seccomp/default.json`) permits a
//! container that has Docker's default capabilities, on the x86 family. Generated profiles
//! are never looser than this: a recorded syscall outside it is left out (and reported), and
//! the calls Docker allows only with argument checks keep those checks.
//!
//! Written out here as data (names, grouped by what they do) rather than loaded from Docker,
//! because nodes running containerd have no Docker profile to read.

use super::oci::{OciArg, OciRule};

mod allowed;
use allowed::ALLOWED;

/// `clone` flags Docker refuses without CAP_SYS_ADMIN: CLONE_NEWNS | NEWUTS | NEWIPC | NEWUSER
/// | NEWPID | NEWNET | NEWCGROUP.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (query).
pub const PERSONALITY_VALUES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// AF_VSOCK: `socket` is allowed for every other family.
pub const AF_VSOCK: u64 = 40;

pub fn allows_outright(name: &str) -> bool {
    ALLOWED.contains(&name)
}

/// Allowed only with argument checks (`clone`, `personality`, `socket`).
pub fn is_conditional(name: &str) -> bool {
    matches!(name, "clone" | "personality" | "socket")
}

/// True when Docker's default profile permits `name` in some form.
pub fn permits(name: &str) -> bool {
    allows_outright(name) || is_conditional(name)
}

/// Docker's rules for a conditional call, as OCI rules that allow it.
pub fn conditional_rules(name: &str) -> Vec<OciRule> {
    let arg = |index: u32, value: u64, value_two: u64, op: &str| OciArg { index, value, value_two, op: op.to_string() };
    match name {
        "clone" => vec![OciRule::allow_with("clone", vec![arg(0, CLONE_NAMESPACE_FLAGS, 0, "SCMP_CMP_MASKED_EQ")])],
        "personality" => PERSONALITY_VALUES
            .iter()
            .map(|v| OciRule::allow_with("personality", vec![arg(0, *v, 0, "SCMP_CMP_EQ")]))
            .collect(),
        "socket" => vec![OciRule::allow_with("socket", vec![arg(0, AF_VSOCK, 0, "SCMP_CMP_NE")])],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests;
