//! The seccomp profiles a policy assigns: read and checked when the policy is loaded (a bad
//! one is a policy error at its key), looked up by the id `Effective::seccomp_profile` holds.

use std::collections::BTreeMap;

use super::{Policy, PolicyError};
use crate::seccomp::oci::OciProfile;

impl Policy {
    /// Reads every assigned seccomp profile; an unreadable or invalid one is a policy error
    /// that names the key, so a bad profile never half-applies.
    pub(super) fn load_seccomp_profiles(
        &self,
        origin: &str,
        text: &str,
    ) -> Result<BTreeMap<String, OciProfile>, PolicyError> {
        let keyed = self.seccomp_profile.iter().map(|p| ("seccomp_profile".to_string(), p)).chain(
            self.overrides.iter().enumerate().filter_map(|(i, o)| {
                o.seccomp_profile.as_ref().map(|p| (format!("overrides[{i}].seccomp_profile"), p))
            }),
        );
        let mut out = BTreeMap::new();
        for (key, path) in keyed {
            let line = text.lines().position(|l| l.contains(path.as_str())).map(|i| i + 1);
            let err = |message: String| PolicyError {
                origin: origin.to_string(),
                line,
                column: None,
                key: key.clone(),
                message,
            };
            if !path.starts_with('/') {
                return Err(err(format!("{path:?} is not an absolute path")));
            }
            let raw = std::fs::read_to_string(path).map_err(|e| err(format!("reading {path}: {e}")))?;
            let de = &mut serde_json::Deserializer::from_str(&raw);
            let profile: OciProfile = serde_path_to_error::deserialize(de)
                .map_err(|e| err(format!("{path}: {}: {}", e.path(), e.inner())))?;
            let problems = crate::seccomp::profile::validate(&profile);
            if !problems.is_empty() {
                return Err(err(format!("{path}: {}", problems.join("; "))));
            }
            out.insert(path.clone(), profile);
        }
        Ok(out)
    }

    /// The path and profile of seccomp profile `id` (see `Effective::seccomp_profile`).
    pub fn seccomp_profile_by_id(&self, id: u32) -> Option<(&str, &OciProfile)> {
        let path = match id {
            0 => None,
            1 => self.seccomp_profile.as_deref(),
            n => self.overrides.get(n as usize - 2).and_then(|o| o.seccomp_profile.as_deref()),
        }?;
        self.seccomp_profiles.get(path).map(|p| (path, p))
    }

    /// True when some notebook can be assigned a profile (the drift watch is needed).
    pub fn any_seccomp_profile(&self) -> bool {
        !self.seccomp_profiles.is_empty()
    }
}
