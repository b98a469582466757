//! Which notebook a kernel serves: its connection file names the kernel, its environment the
//! notebook. Read once per kernel — when the kernel's exec is seen, or from /proc for kernels
//! that were already running when the agent started.

use std::path::Path;

use crate::discovery::attribution::env_var;

/// The notebook a kernel serves, read once from the kernel's environment and argv.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCtx {
    pub kernel_id: Option<String>,
    /// `JPY_SESSION_NAME`: user-controlled, a hint.
    pub notebook_path: Option<String>,
}

/// The kernel's id from its connection file: the file after `-f` (ipykernel, xeus kernels;
/// `kernel-<id>.json` as Jupyter servers name it, any name as other clients do), else a
/// `…/kernel-<id>.json` anywhere in argv (IRkernel passes it after `--args`).
pub fn kernel_id<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> Option<String> {
    let id = |a: &S, strict: bool| {
        let name = Path::new(a.as_ref()).file_name()?.to_str()?;
        let stem = name.strip_suffix(".json")?;
        let id = match stem.strip_prefix("kernel-") {
            Some(id) => id,
            None if strict => return None,
            None => stem,
        };
        (!id.is_empty()).then(|| id.to_string())
    };
    after_f(argv).and_then(|a| id(a, false)).or_else(|| argv.iter().find_map(|a| id(a, true)))
}

/// The argument after `-f`.
fn after_f<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> Option<&S> {
    argv.windows(2).find(|w| w[0].as_ref() == "-f").map(|w| &w[1])
}

/// The connection file of a kernel with command line `argv`, found as [`kernel_id`] finds
/// its id: after `-f`, else an argument named `kernel-*.json` (IRkernel).
pub fn connection_file<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> Option<std::path::PathBuf> {
    let named = |a: &&S| {
        let name = Path::new(a.as_ref()).file_name().and_then(|n| n.to_str());
        name.is_some_and(|n| n.starts_with("kernel-") && n.ends_with(".json"))
    };
    after_f(argv).or_else(|| argv.iter().find(named)).map(|a| Path::new(a.as_ref()).to_path_buf())
}

/// Reads the context of kernel `pid` running `argv`, and hands its environment to `learn`
/// (its secrets, such as the kernel's API token, are masked wherever they show up later).
pub fn read<S: AsRef<std::ffi::OsStr>>(
    proc_root: &Path,
    pid: u32,
    argv: &[S],
    learn: &mut dyn FnMut(&[u8]),
) -> KernelCtx {
    let environ = std::fs::read(proc_root.join(pid.to_string()).join("environ")).unwrap_or_default();
    learn(&environ);
    KernelCtx { kernel_id: kernel_id(argv), notebook_path: env_var(&environ, "JPY_SESSION_NAME") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_file_names_the_kernel_wherever_it_is() {
        let ipykernel = ["p", "-m", "ipykernel_launcher", "-f", "/r/kernel-1234-ab.json"];
        assert_eq!(kernel_id(&ipykernel).as_deref(), Some("1234-ab"));
        let irkernel = ["/usr/lib/R/bin/exec/R", "--slave", "-e", "IRkernel::main()", "--args", "/r/kernel-9f.json"];
        assert_eq!(kernel_id(&irkernel).as_deref(), Some("9f"));
        assert_eq!(kernel_id(&["python3", "-c", "print(1)"]), None);
        assert_eq!(kernel_id(&["x", "/r/kernel-.json", "/r/kernels.json"]), None);
        // jupyter_client's own managers pick a temporary name.
        assert_eq!(
            kernel_id(&["p", "-m", "ipykernel_launcher", "-f", "/tmp/tmpo99ugoyf.json"]).as_deref(),
            Some("tmpo99ugoyf")
        );
    }

    #[test]
    fn connection_files_are_found_in_kernel_command_lines() {
        let ipy = ["python", "-m", "ipykernel_launcher", "-f", "/r/kernel-1.json"];
        assert_eq!(connection_file(&ipy), Some("/r/kernel-1.json".into()));
        let ir = ["R", "--slave", "-e", "IRkernel::main()", "--args", "/r/kernel-2.json"];
        assert_eq!(connection_file(&ir), Some("/r/kernel-2.json".into()));
        assert_eq!(connection_file(&["python", "x.py"]), None);
    }

    #[test]
    fn reads_a_running_kernels_notebook_from_its_environment() {
        let dir = std::env::temp_dir().join(format!("guard-kctx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("42")).unwrap();
        std::fs::write(dir.join("42/environ"), b"A=1\0JPY_SESSION_NAME=/home/u/a.ipynb\0TOKEN=s\0").unwrap();
        let argv = ["python", "-m", "ipykernel_launcher", "-f", "/r/kernel-7.json"];
        let mut seen = Vec::new();
        let ctx = read(&dir, 42, &argv, &mut |env| seen.extend_from_slice(env));
        assert_eq!(ctx, KernelCtx { kernel_id: Some("7".into()), notebook_path: Some("/home/u/a.ipynb".into()) });
        assert!(seen.starts_with(b"A=1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
