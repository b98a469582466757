use super::super::arch::Arch;
use super::*;

#[test]
fn every_name_is_a_real_syscall_and_x86_64_allows_the_published_set() {
    // A misspelt name would silently allow nothing: each must be known to libseccomp for
    // some architecture (i386-only names such as `chown32` included).
    for n in ALLOWED {
        assert!(libseccomp::ScmpSyscall::from_name(n).is_ok(), "{n}");
    }
    // moby's profile on x86_64 with default capabilities, resolved by this libseccomp:
    // 295 outright (names the library knows for x86_64) + clone, personality, socket.
    let outright = ALLOWED.iter().filter(|n| Arch::X86_64.knows(n)).count();
    assert_eq!(outright + 3, 298);
}

#[test]
fn namespace_and_admin_calls_are_outside() {
    for n in ["mount", "unshare", "setns", "bpf", "perf_event_open", "kexec_load", "init_module", "keyctl"] {
        assert!(!permits(n), "{n}");
    }
    assert!(permits("clone") && !allows_outright("clone"));
    assert!(!permits("clone3"), "clone3 answers ENOSYS under Docker");
}
