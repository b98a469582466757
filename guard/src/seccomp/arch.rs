//! Syscall tables by architecture, named through libseccomp (the same tables the runtimes use
//! when they load a profile, so a name we write is a name runc/crun resolve).

use std::fmt;

use libseccomp::{ScmpArch, ScmpSyscall};
use serde::{Deserialize, Serialize};

use guard_abi::recorder::{ARCH_COMPAT, ARCH_NATIVE, ARCH_X32, X32_SYSCALL_BIT};

/// The architectures a profile for an x86_64 node covers (the OCI `architectures` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "SCMP_ARCH_X86_64")]
    X86_64,
    #[serde(rename = "SCMP_ARCH_X86")]
    X86,
    #[serde(rename = "SCMP_ARCH_X32")]
    X32,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::X86, Arch::X32];

    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "SCMP_ARCH_X86_64",
            Arch::X86 => "SCMP_ARCH_X86",
            Arch::X32 => "SCMP_ARCH_X32",
        }
    }

    pub fn from_oci_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.oci_name() == s)
    }

    pub fn scmp(self) -> ScmpArch {
        match self {
            Arch::X86_64 => ScmpArch::X8664,
            Arch::X86 => ScmpArch::X86,
            Arch::X32 => ScmpArch::X32,
        }
    }

    /// The recorder's slot for this architecture on an x86_64 kernel.
    pub fn recorder_index(self) -> usize {
        match self {
            Arch::X86_64 => ARCH_NATIVE,
            Arch::X86 => ARCH_COMPAT,
            Arch::X32 => ARCH_X32,
        }
    }

    /// The syscall's name in this architecture's table, if libseccomp knows the number.
    pub fn name_of(self, nr: u32) -> Option<String> {
        // libseccomp numbers x32 calls with the x32 bit set.
        let nr = if self == Arch::X32 { nr as u64 | X32_SYSCALL_BIT } else { nr as u64 };
        ScmpSyscall::from(nr as i32).get_name_by_arch(self.scmp()).ok()
    }

    /// The number of `name` in this architecture's table. libseccomp answers a negative
    /// pseudo-number for a name that exists elsewhere but not here: that is "unknown".
    pub fn number_of(self, name: &str) -> Option<i32> {
        ScmpSyscall::from_name_by_arch(name, self.scmp()).ok().map(i32::from).filter(|n| *n >= 0)
    }

    pub fn knows(self, name: &str) -> bool {
        self.number_of(name).is_some()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oci_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_differ_by_architecture() {
        // The same number means different calls: why a recorder must keep the arch.
        assert_eq!(Arch::X86_64.name_of(20).as_deref(), Some("writev"));
        assert_eq!(Arch::X86.name_of(20).as_deref(), Some("getpid"));
        assert_eq!(Arch::X86_64.number_of("getpid"), Some(39));
        assert_eq!(Arch::X86.number_of("getpid"), Some(20));
        assert!(Arch::X32.knows("read"));
        assert!(!Arch::X86_64.knows("no_such_call"));
        assert_eq!(Arch::from_oci_name("SCMP_ARCH_X86"), Some(Arch::X86));
    }
}
