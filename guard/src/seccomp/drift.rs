//! Drift: notebooks assigned a seccomp profile by the policy are watched with the recorder,
//! and a syscall outside their profile is reported once per notebook, as it first happens.
//! The point is to hear of it before the profile is enforced and the workload breaks (a call
//! already refused by an enforced profile never reaches `sys_enter`).

use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::Result;
use guard_abi::{recorder::WORDS, SyscallSet};

use super::{
    arch::Arch,
    oci::{OciProfile, ACT_ALLOW},
    recorder::Recorder,
};
use crate::discovery::attribution::Attribution;

/// One syscall a notebook made that its profile does not allow.
#[derive(Clone, Debug)]
pub struct Drift {
    pub who: Arc<Attribution>,
    pub arch: Arch,
    /// The name, or `#NR` when libseccomp cannot name the number.
    pub syscall: String,
    pub profile: String,
    /// What the profile would answer, e.g. `SCMP_ACT_ERRNO(1)`.
    pub verdict: String,
}

struct Watched {
    who: Arc<Attribution>,
    profile_id: u32,
    profile_path: String,
    profile: OciProfile,
    slot: u32,
    /// Calls already judged.
    seen: SyscallSet,
}

pub struct DriftWatch {
    recorder: Recorder,
    watched: HashMap<u64, Watched>,
}

impl DriftWatch {
    /// Loads and attaches the recorder: from here on every syscall on the node pays for it.
    pub fn start(btf: &Path) -> Result<Self> {
        let mut recorder = Recorder::load(btf)?;
        recorder.attach()?;
        Ok(Self { recorder, watched: HashMap::new() })
    }

    /// Watches `cgroup_id` against a profile. A new profile re-judges everything seen so far.
    pub fn assign(
        &mut self,
        cgroup_id: u64,
        who: Arc<Attribution>,
        profile_id: u32,
        path: &str,
        profile: &OciProfile,
    ) -> Result<()> {
        if let Some(w) = self.watched.get_mut(&cgroup_id) {
            w.who = who;
            if w.profile_id == profile_id && w.profile_path == path && &w.profile == profile {
                return Ok(());
            }
            w.profile_id = profile_id;
            w.profile_path = path.to_string();
            w.profile = profile.clone();
            w.seen = SyscallSet::default();
            return Ok(());
        }
        let slot = self.recorder.add(cgroup_id)?;
        self.watched.insert(
            cgroup_id,
            Watched {
                who,
                profile_id,
                profile_path: path.to_string(),
                profile: profile.clone(),
                slot,
                seen: SyscallSet::default(),
            },
        );
        Ok(())
    }

    pub fn unassign(&mut self, cgroup_id: u64) {
        if self.watched.remove(&cgroup_id).is_some() {
            self.recorder.remove(cgroup_id);
        }
    }

    pub fn watched_ids(&self) -> Vec<u64> {
        self.watched.keys().copied().collect()
    }

    /// Calls made since the last poll that the notebook's profile does not allow.
    pub fn poll(&mut self) -> Result<Vec<Drift>> {
        let mut out = Vec::new();
        for watch in self.watched.values_mut() {
            let now = self.recorder.read(watch.slot)?;
            // Word by word: a whole word with nothing new (the usual case, every second, for
            // every watched notebook) costs one comparison, not 64 bit tests.
            for arch in Arch::ALL {
                let a = arch.recorder_index();
                for word in 0..WORDS {
                    let i = a * WORDS + word;
                    let mut fresh = now.words[i] & !watch.seen.words[i];
                    watch.seen.words[i] |= fresh;
                    while fresh != 0 {
                        let nr = word * 64 + fresh.trailing_zeros() as usize;
                        fresh &= fresh - 1;
                        let name = arch.name_of(nr as u32);
                        if let Some(verdict) = refusal(&watch.profile, arch, name.as_deref()) {
                            out.push(Drift {
                                who: watch.who.clone(),
                                arch,
                                syscall: name.unwrap_or_else(|| format!("#{nr}")),
                                profile: watch.profile_path.clone(),
                                verdict,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// What `profile` does with a call, when that is not to allow it. A call allowed only with
/// argument conditions counts as allowed (the recorder does not see arguments).
pub fn refusal(profile: &OciProfile, arch: Arch, name: Option<&str>) -> Option<String> {
    let listed = profile.architectures.is_empty() && arch == Arch::X86_64
        || profile.architectures.iter().any(|a| a == arch.oci_name());
    let describe = |action: &str, errno: Option<u32>| match errno {
        Some(e) => format!("{action}({e})"),
        None => action.to_string(),
    };
    let default = describe(&profile.default_action, profile.default_errno_ret);
    if !listed {
        return Some(format!("{default} (architecture not in the profile)"));
    }
    let Some(name) = name else { return Some(default) };
    let rules: Vec<_> = profile.syscalls.iter().filter(|r| r.names.iter().any(|n| n == name)).collect();
    if rules.iter().any(|r| r.action == ACT_ALLOW) {
        return None;
    }
    match rules.first() {
        Some(r) => Some(describe(&r.action, r.errno_ret)),
        None if profile.default_action == ACT_ALLOW => None,
        None => Some(default),
    }
}

#[cfg(test)]
mod tests {
    use super::super::oci::OciRule;
    use super::*;

    #[test]
    fn refusal_follows_the_profile() {
        let p = OciProfile::with_rules(
            1,
            vec![OciRule::allow(vec!["read".into()]), OciRule::errno(vec!["clone3".into()], 38)],
        );
        assert_eq!(refusal(&p, Arch::X86_64, Some("read")), None);
        assert_eq!(refusal(&p, Arch::X86_64, Some("ptrace")).as_deref(), Some("SCMP_ACT_ERRNO(1)"));
        assert_eq!(refusal(&p, Arch::X86_64, Some("clone3")).as_deref(), Some("SCMP_ACT_ERRNO(38)"));
        assert!(refusal(&p, Arch::X86, Some("read")).unwrap().contains("architecture"));
    }
}
