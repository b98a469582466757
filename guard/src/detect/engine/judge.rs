//! The verdict on one exec: what the process is (its role) and which rules fire, from facts the
//! engine gathered. Python by identity; sanctioned kernels' starts; terminals and `%pip` as
//! allowances; helpers by identity, parent and arguments; then the rules.

use std::sync::Arc;

use super::{Detector, ExecExt};
use crate::{
    enrich::{
        paths::{in_system_dir, is_fileless, under},
        ExecFacts,
    },
    policy::{
        rules::{self, Rule},
        Effective, HelperParent,
    },
    process::{
        roles::{is_kernel_argv, is_server_argv},
        table::Role,
    },
    sensors::decode::Exec,
};

impl Detector {
    /// (role, rules that fired with a detail each).
    pub(super) fn judge(&mut self, f: &mut ExecFacts<'_>, eff: &Effective) -> (Role, Vec<(Rule, String)>) {
        let e = f.e;
        let policy = self.policy.clone();
        if f.is_python {
            let role = if is_server_argv(&f.argv) {
                Role::Server
            } else if is_kernel_argv(&f.argv) {
                Role::Kernel
            } else {
                Role::Python
            };
            return (role, vec![]);
        }
        // A sanctioned kernel's start: its launcher's own helpers, then the kernel itself; and
        // the commands the policy names for such kernels.
        if f.parent_role == Role::KernelLauncher {
            return (Role::Helper, vec![]);
        }
        if f.prev_role == Role::KernelLauncher {
            return (Role::Kernel, vec![]);
        }
        if f.in_kernel_command {
            return (Role::KernelCommand, vec![]);
        }
        // A sanctioned terminal session runs what its user types.
        if f.in_terminal && eff.allowances.terminals {
            return (Role::Terminal, vec![]);
        }
        let ids = &mut *f.ids;
        let base = f.exe_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let exe_in_system_dir = in_system_dir(&f.exe_path);
        let sys_names = f.system_names.clone();
        let is_loader = ids.loaders.contains(&e.exe);
        // (helper, whether it is the exec'd `#!` script rather than the loaded binary): a
        // script runs as its interpreter, so a helper script is known by its path.
        let mut helper_ids: Vec<(usize, bool)> =
            ids.helpers.get(&e.exe).into_iter().flatten().map(|&h| (h, false)).collect();
        if e.interp.is_some() {
            helper_ids.extend(ids.helper_scripts.get(&f.exe_path).into_iter().flatten().map(|&h| (h, true)));
        }
        // A copy of a system binary elsewhere (content equal, inode not).
        let copy_of = f.copy_of;
        let real_names: Arc<[String]> = match (&sys_names, copy_of) {
            (Some(n), _) => n.clone(),
            (None, Some(orig)) => ids.system_names(&orig).unwrap_or_else(|| Arc::new([])),
            _ => Arc::new([e.exe_name.to_string_lossy().into_owned()]),
        };
        let named = |set: &std::collections::BTreeSet<String>| real_names.iter().find(|n| set.contains(*n)).cloned();
        let shell = named(&policy.shells);

        // The server starting a sanctioned kernel: its launcher script (R's wrapper), or the
        // kernel's binary itself.
        if f.parent_is_python {
            if e.interp.is_some() && ids.launcher_scripts.contains_key(&f.exe_path) {
                return (Role::KernelLauncher, vec![]);
            }
            if ids.launchers.contains_key(&e.exe) {
                return (Role::Kernel, vec![]);
            }
        }
        if shell.is_some() && crate::policy::kernelspecs::is_kernel_command(&policy.kernel_commands, &f.argv) {
            return (Role::KernelCommand, vec![]);
        }

        // Jupyter terminal: a shell whose parent is the notebook server.
        if shell.is_some() && f.parent_role == Role::Server {
            if eff.allowances.terminals {
                return (Role::Terminal, vec![]);
            }
            return (Role::Terminal, vec![(rules::TERMINAL_SHELL, String::new())]);
        }
        // Helpers: identity, parent and arguments.
        for &(h, script) in &helper_ids {
            let spec = &policy.helpers[h];
            let parent_ok = match spec.parent {
                HelperParent::Python => f.parent_is_python,
                HelperParent::Helper => f.parent_is_python || f.parent_role == Role::Helper,
            };
            if parent_ok && self.helper_args[h].matches(helper_args(f, script)) {
                return (Role::Helper, vec![]);
            }
        }
        // %pip: sh -c "<python> -m pip …" from a Python process.
        if shell.is_some()
            && eff.allowances.pip_magic
            && f.parent_is_python
            && f.argv.len() == 3
            && f.argv[1] == "-c"
            && f.argv[2].contains(" -m pip ")
        {
            return (Role::PipShell, vec![]);
        }

        let mut fired: Vec<(Rule, String)> = Vec::new();
        if is_fileless(e) {
            fired.push((rules::FILELESS, format!("loaded={}", e.exe_name.to_string_lossy())));
        }
        if is_loader {
            fired.push((rules::LOADER, format!("target={}", f.argv.get(1).cloned().unwrap_or_default())));
        }
        if let Some(w) = policy.writable_paths.iter().find(|w| under(&f.exe_path, w)) {
            fired.push((rules::WRITABLE_PATH, format!("under={w}")));
        }
        // For a `#!` script the loaded binary is its interpreter: compare the interpreter's name.
        let (shown, shown_in_system_dir) = match &e.interp {
            Some(i) => (i.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), in_system_dir(i)),
            None => (base.clone(), exe_in_system_dir),
        };
        if !shown_in_system_dir
            && !real_names.is_empty()
            && (sys_names.is_some() || copy_of.is_some())
            && !real_names.contains(&shown)
        {
            fired.push((rules::MASQUERADE, format!("real={}", real_names.join("|"))));
        }
        if let Some(n) = named(&policy.package_managers) {
            fired.push((rules::PACKAGE_MANAGER, format!("tool={n}")));
        }
        if let Some(n) = named(&policy.network_tools) {
            fired.push((rules::NETWORK_TOOL, format!("tool={n}")));
        }
        if shell.is_some() && e.meta.cgroup_id != 0 && stdio_is_network(e) {
            fired.push((rules::REVERSE_SHELL, String::new()));
        }
        if fired.is_empty() && (f.python_ancestor || e.flags_killed()) {
            fired.push((rules::NON_PYTHON_EXEC, String::new()));
        }
        (Role::Other, fired)
    }
}

/// A helper's own arguments: argv[1..], or for a helper that is the exec'd `#!` script (argv:
/// interpreter, its optional argument, the script's path, …) what follows the script's path.
pub(super) fn helper_args<'a>(f: &'a ExecFacts<'_>, script: bool) -> &'a [String] {
    let path = f.e.filename.to_string_lossy();
    let script_at = script.then(|| f.argv.iter().take(3).position(|a| *a == path)).flatten();
    f.argv.get(script_at.unwrap_or(0) + 1..).unwrap_or(&[])
}

/// stdin and stdout are both sockets: the classic `bash -i >& /dev/tcp/…` / `socat exec:` shape.
pub(super) fn stdio_is_network(e: &Exec) -> bool {
    e.stdio_sockets & 0b011 == 0b011
}
