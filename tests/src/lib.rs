//! Test harness for privileged integration tests: real cgroups, real processes, real kernel.
//!
//! Tests that need root start with [`privileged!`]. Outside CI a non-root run skips them with a
//! message; in CI (`CI` or `GUARD_REQUIRE_PRIVILEGED` set) a skip is a failure.

pub mod fake_kube;
pub mod hub;
pub mod notebook;
pub mod pod;
pub mod seccomp;
pub mod unit;

mod agent;
mod cgroup;
mod kernel;
mod leftovers;
mod net;
mod sensor;
mod wait;

pub use agent::*;
pub use cgroup::*;
pub use kernel::*;
pub(crate) use leftovers::*;
pub use net::*;
pub use sensor::*;
pub use wait::*;

use std::{
    ffi::{CString, OsStr},
    fs,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use guard::{
    discovery::cgroup::{cgroup_id, find_cgroup2_mount},
    sensors::{
        decode::{decode, Event},
        process::{ProcessSensor, SensorOptions},
    },
};
use nix::{
    sys::wait::{waitpid, WaitStatus},
    unistd::{fork, ForkResult, Pid},
};

/// Opens a privileged test: the test returns here (a skip, said on stderr) unless it runs as
/// root, and fails instead where skips are forbidden (CI). libtest names each test's thread
/// after the test, which names it in the message.
#[macro_export]
macro_rules! privileged {
    () => {
        if !$crate::require_root(std::thread::current().name().unwrap_or("this test")) {
            return;
        }
    };
}

/// True when privileged tests can run. Panics instead of skipping where skips are forbidden.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let strict = std::env::var_os("GUARD_REQUIRE_PRIVILEGED").is_some_and(|v| v != "0")
        || std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1");
    if strict {
        panic!("{test} needs root, and skipping privileged tests is not allowed here");
    }
    eprintln!("SKIP {test}: needs root");
    false
}

static NEXT: AtomicU32 = AtomicU32::new(0);

#[cfg(test)]
mod tests {
    #[test]
    fn libtest_names_each_test_thread_after_its_test() {
        // `privileged!` names the skipped or failed test from this.
        assert_eq!(std::thread::current().name(), Some("tests::libtest_names_each_test_thread_after_its_test"));
    }
}
