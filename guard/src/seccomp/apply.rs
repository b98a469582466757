//! Applying a profile with libseccomp: `guard seccomp check PROFILE -- CMD` loads the filter
//! into itself and execs CMD, which then runs under exactly the rules a runtime would load.

use std::{ffi::CString, os::unix::ffi::OsStrExt};

use anyhow::{anyhow, bail, Context, Result};
use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};

use super::{arch::Arch, oci::OciArg, oci::OciProfile};

/// The libseccomp action for an OCI action name (errno actions need their errno).
pub fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        other => bail!("{other:?} is not a seccomp action this guard applies"),
    })
}

pub fn compare(a: &OciArg) -> Result<ScmpArgCompare> {
    let op = match a.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // OCI: `value` is the mask, `valueTwo` the value compared after masking.
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(a.value),
        other => bail!("{other:?} is not a comparison operator"),
    };
    if a.index > 5 {
        bail!("argument index {} is past the sixth argument", a.index);
    }
    let datum = if a.op == "SCMP_CMP_MASKED_EQ" { a.value_two } else { a.value };
    Ok(ScmpArgCompare::new(a.index, op, datum))
}

/// A libseccomp filter with the profile's rules, the way runc and crun build theirs.
pub fn build_filter(p: &OciProfile) -> Result<ScmpFilterContext> {
    let problems = super::profile::validate(p);
    if !problems.is_empty() {
        bail!("the profile is not valid:\n  {}", problems.join("\n  "));
    }
    let default = action(&p.default_action, p.default_errno_ret)?;
    let mut f = ScmpFilterContext::new(default).map_err(|e| anyhow!("creating the filter: {e}"))?;
    // A call from an architecture the profile does not list gets the default action rather
    // than libseccomp's kill.
    f.set_act_badarch(default).map_err(|e| anyhow!("setting the bad-architecture action: {e}"))?;
    for a in &p.architectures {
        let arch = Arch::from_oci_name(a).ok_or_else(|| anyhow!("unknown architecture {a}"))?;
        if !f.is_arch_present(arch.scmp()).unwrap_or(false) {
            f.add_arch(arch.scmp()).map_err(|e| anyhow!("adding {a}: {e}"))?;
        }
    }
    for (i, r) in p.syscalls.iter().enumerate() {
        let act = action(&r.action, r.errno_ret)?;
        let cmps: Vec<ScmpArgCompare> = r.args.iter().map(compare).collect::<Result<_>>()?;
        for name in &r.names {
            // A name only some listed architectures have is resolved per architecture by
            // libseccomp; a name none of them has was refused by validate().
            let sc = libseccomp::ScmpSyscall::from_name(name)
                .or_else(|_| {
                    Arch::ALL
                        .iter()
                        .find_map(|a| libseccomp::ScmpSyscall::from_name_by_arch(name, a.scmp()).ok())
                        .ok_or(())
                })
                .map_err(|_| anyhow!("syscalls[{i}]: {name:?} is unknown"))?;
            let res = if cmps.is_empty() { f.add_rule(act, sc) } else { f.add_rule_conditional(act, sc, &cmps) };
            // The default action itself cannot be added as a rule; anything else is an error.
            if let Err(e) = res {
                if act != default {
                    bail!("syscalls[{i}] {name}: {e}");
                }
            }
        }
    }
    Ok(f)
}

/// Loads the profile into this process (no_new_privs set) and execs `cmd`; returns only on
/// failure.
pub fn exec_under(p: &OciProfile, cmd: &[std::ffi::OsString]) -> Result<std::convert::Infallible> {
    let Some(prog) = cmd.first() else { bail!("no command given after --") };
    let argv: Vec<CString> = cmd
        .iter()
        .map(|a| CString::new(a.as_bytes()).context("an argument contains a NUL byte"))
        .collect::<Result<_>>()?;
    let filter = build_filter(p)?;
    filter.load().map_err(|e| anyhow!("loading the filter: {e}"))?;
    let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    bail!("running {}: {err}", prog.to_string_lossy())
}
