//! `guard posture`: the posture findings of every notebook on this node, now, as a table (or
//! JSON lines). A notebook is a Jupyter server or kernel whose environment names its
//! JupyterHub user (every spawner sets `JUPYTERHUB_USER`).

use std::{collections::BTreeSet, path::Path};

use anyhow::Result;
use guard::{
    detect::engine::posture::findings,
    discovery::attribution::env_var,
    enrich::posture::gather,
    policy::root::Root,
    process::kernel::connection_file,
    process::roles::{is_kernel_argv, is_server_argv},
};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PostureFormat {
    Text,
    Json,
}

struct Row {
    notebook: String,
    pid: u32,
    rule: &'static str,
    detail: String,
    fix: &'static str,
}

/// Prints the findings; returns how many there are.
pub fn run(format: PostureFormat) -> Result<usize> {
    let proc_root = Path::new("/proc");
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        // Races with exits are normal: a vanished process is skipped.
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
        let argv: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let kernel = is_kernel_argv(&argv) || argv.iter().any(|a| a.contains("IRkernel::main"));
        if !kernel && !is_server_argv(&argv) {
            continue;
        }
        let Ok(environ) = std::fs::read(dir.join("environ")) else { continue };
        let Some(user) = env_var(&environ, "JUPYTERHUB_USER") else { continue };
        let server = env_var(&environ, "JUPYTERHUB_SERVER_NAME").filter(|s| !s.is_empty());
        // In a Kubernetes pod the host name is the pod's name.
        let pod = env_var(&environ, "KUBERNETES_SERVICE_HOST").and_then(|_| env_var(&environ, "HOSTNAME"));
        let notebook = [Some(user), server.map(|s| format!("server {s}")), pod.map(|p| format!("pod {p}"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        let Ok((_, root)) = Root::open(&dir.join("root")) else { continue };
        let conn = if kernel { connection_file(&argv) } else { None };
        for f in findings(&gather(proc_root, pid, &root, conn.as_deref())) {
            if seen.insert((notebook.clone(), f.rule.name, f.subject.clone())) {
                rows.push(Row { notebook: notebook.clone(), pid, rule: f.rule.name, detail: f.detail, fix: f.fix });
            }
        }
    }
    match format {
        PostureFormat::Json => {
            for r in &rows {
                let line =
                    json!({"notebook": r.notebook, "pid": r.pid, "rule": r.rule, "detail": r.detail, "fix": r.fix});
                println!("{line}");
            }
        }
        PostureFormat::Text if rows.is_empty() => println!("no posture findings on this node"),
        PostureFormat::Text => {
            let w = |f: &dyn Fn(&Row) -> usize, head: &str| rows.iter().map(f).max().unwrap_or(0).max(head.len());
            let (wn, wr, wd) = (
                w(&|r| r.notebook.len(), "NOTEBOOK"),
                w(&|r| r.rule.len(), "FINDING"),
                w(&|r| r.detail.len(), "DETAIL"),
            );
            println!("{:wn$}  {:>7}  {:wr$}  {:wd$}  FIX", "NOTEBOOK", "PID", "FINDING", "DETAIL");
            for r in &rows {
                println!("{:wn$}  {:>7}  {:wr$}  {:wd$}  {}", r.notebook, r.pid, r.rule, r.detail, r.fix);
            }
        }
    }
    Ok(rows.len())
}
