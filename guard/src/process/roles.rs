//! What a process is to its notebook, from what it runs: a server's and a kernel's command
//! lines, and the role of a process seeded from /proc (its exec was never seen).

use super::table::{ProcInfo, Role};

/// What a process is: the role its exec gave it, or for one seeded from /proc, what it runs.
pub fn role_of(p: &ProcInfo, is_python: bool) -> Role {
    if p.role != Role::Unknown {
        return p.role;
    }
    // Seeded from /proc: decide from what it runs.
    let argv: Vec<String> = p.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    match is_python {
        true if is_server_argv(&argv) => Role::Server,
        true if is_kernel_argv(&argv) => Role::Kernel,
        true => Role::Python,
        false => Role::Other,
    }
}

/// An IPython kernel's command line.
pub fn is_kernel_argv(argv: &[String]) -> bool {
    argv.iter().any(|a| a.ends_with("ipykernel_launcher") || a == "ipykernel_launcher")
        || argv.windows(2).any(|w| w[0] == "-m" && (w[1] == "ipykernel" || w[1] == "ipykernel_launcher"))
}

/// A notebook server's command line.
pub fn is_server_argv(argv: &[String]) -> bool {
    const SERVERS: &[&str] = &[
        "jupyterhub-singleuser",
        "jupyter-lab",
        "jupyter-labhub",
        "jupyter-notebook",
        "jupyter-server",
        "jupyter-nbclassic",
    ];
    argv.iter().take(3).any(|a| {
        let base = a.rsplit('/').next().unwrap_or(a);
        SERVERS.contains(&base)
    }) || argv.windows(2).any(|w| {
        w[0] == "-m" && matches!(w[1].as_str(), "jupyter_server" | "jupyterlab" | "notebook" | "jupyterhub.singleuser")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn recognises_kernels_and_servers() {
        assert!(is_kernel_argv(&v(&["/opt/conda/bin/python3", "-m", "ipykernel_launcher", "-f", "/x/kernel-ab.json"])));
        assert!(!is_kernel_argv(&v(&["python", "/usr/lib/python3/dist-packages/ipykernel_launcher.py"])));
        assert!(is_server_argv(&v(&[
            "/opt/conda/bin/python3.11",
            "/opt/conda/bin/jupyterhub-singleuser",
            "--ip=0.0.0.0"
        ])));
        assert!(is_server_argv(&v(&["python", "-m", "jupyter_server"])));
        assert!(!is_server_argv(&v(&["python", "-c", "print('jupyter-lab')"])));
    }
}
