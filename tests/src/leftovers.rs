//! What killed test runs leave (pinned programs, empty cgroups), known by the names this
//! harness gives and removed once their creator is gone.

use crate::*;

/// The test process that made a leftover, from the names this harness gives: `<name>-<pid>-<n>`
/// (cgroups, pin directories) and `jupyter-nbtest<pid>x<n>.service` (TLJH-shaped cgroups).
pub(crate) fn creator_pid(name: &str) -> Option<i32> {
    if let Some(rest) = name.strip_prefix("jupyter-nbtest").and_then(|r| r.strip_suffix(".service")) {
        let (pid, n) = rest.split_once('x')?;
        n.parse::<u32>().ok()?;
        return pid.parse().ok();
    }
    let (head, n) = name.rsplit_once('-')?;
    n.parse::<u32>().ok()?;
    head.rsplit_once('-')?.1.parse().ok()
}

/// Removes what test runs that were killed (a CI timeout, ^C) left: their pinned programs, which
/// would otherwise go on running at every exec of the machine, and their empty cgroups, which
/// the agent would take for notebooks. Only leftovers whose creator is gone are touched.
pub(crate) fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str| {
            creator_pid(name)
                .is_some_and(|pid| pid != std::process::id() as i32 && !Path::new(&format!("/proc/{pid}")).exists())
        };
        for e in fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("nbg-test-") && dead(&name) {
                match guard::sensors::pins::remove_pins(&e.path()) {
                    Ok(n) => eprintln!("removed {n} pins a killed test run left in {}", e.path().display()),
                    Err(err) => eprintln!("could not remove the leftover pins in {}: {err:#}", e.path().display()),
                }
            }
        }
        let Ok(mount) = find_cgroup2_mount() else { return };
        for parent in [mount.clone(), mount.join("system.slice")] {
            for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // A cgroup still holding processes is left alone: nothing is killed here.
                if e.path().is_dir() && dead(&name) && remove_tree(&e.path()).is_ok() {
                    eprintln!("removed the cgroup a killed test run left at {}", e.path().display());
                }
            }
        }
    });
}

pub(crate) fn remove_tree(p: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(p)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    fs::remove_dir(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_known_by_the_names_this_harness_gives_and_nothing_else() {
        assert_eq!(creator_pid("burst-28999-1"), Some(28999));
        assert_eq!(creator_pid("exec-fit-28999-2"), Some(28999));
        assert_eq!(creator_pid("nbg-test-21451-2"), Some(21451));
        assert_eq!(creator_pid("jupyter-nbtest31192x1.service"), Some(31192));
        for other in
            ["system.slice", "user-1000.slice", "session-3.scope", "jupyter-alice.service", "kubepods.slice", "a-b-1"]
        {
            assert_eq!(creator_pid(other), None, "{other}");
        }
    }
}
