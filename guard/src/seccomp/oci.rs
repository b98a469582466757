//! Seccomp profiles in the OCI runtime-spec form (`linux.seccomp`, also kubelet's `localhost`
//! profile files): the types every other part of `seccomp` and the policy read and write.

use serde::{Deserialize, Serialize};

use super::arch::Arch;

pub const ACT_ALLOW: &str = "SCMP_ACT_ALLOW";
pub const ACT_ERRNO: &str = "SCMP_ACT_ERRNO";
pub const EPERM: u32 = 1;
pub const ENOSYS: u32 = 38;

/// An OCI seccomp profile (the field names of the runtime spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciProfile {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    #[serde(default)]
    pub syscalls: Vec<OciRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciRule {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<OciArg>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

impl OciProfile {
    /// Errors with `errno` by default, x86_64 only, with `rules`.
    pub fn with_rules(errno: u32, rules: Vec<OciRule>) -> Self {
        Self {
            default_action: ACT_ERRNO.into(),
            default_errno_ret: Some(errno),
            architectures: vec![Arch::X86_64.oci_name().into()],
            flags: vec![],
            listener_path: None,
            listener_metadata: None,
            syscalls: rules,
        }
    }
}

impl OciRule {
    pub fn allow(names: Vec<String>) -> Self {
        Self { names, action: ACT_ALLOW.into(), errno_ret: None, args: vec![] }
    }
    pub fn allow_with(name: &str, args: Vec<OciArg>) -> Self {
        Self { names: vec![name.into()], action: ACT_ALLOW.into(), errno_ret: None, args }
    }
    pub fn errno(names: Vec<String>, errno: u32) -> Self {
        Self { names, action: ACT_ERRNO.into(), errno_ret: Some(errno), args: vec![] }
    }
}
