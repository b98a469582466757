//! `guard status`: what the pinned programs enforce right now, read from their pins — which
//! notebook cgroups (by path, and the unit, pod or container that is), which process scopes,
//! what the kernel gives a restarted unit — and whether an agent is running. Enforcement
//! outlives the agent by design (a DaemonSet restart must not open a gap); this shows it.

use std::{
    fmt::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHash, Map, MapData};
use guard_abi::{enforce_flags, names, Placement, ENFORCED_ANY};

use crate::discovery::{cgroup::CgroupResolver, workload::Workload};

/// One cgroup the pinned maps name.
pub struct CgroupState {
    pub id: u64,
    pub path: Option<PathBuf>,
    /// `enforce_flags` of exec enforcement, if on.
    pub exec: Option<u32>,
    /// Egress policy value, if the egress hooks judge it.
    pub egress: Option<u32>,
}

pub struct Status {
    pub pin_dir: PathBuf,
    /// Pinned program links (their names).
    pub links: Vec<String>,
    pub cgroups: Vec<CgroupState>,
    /// LocalProcessSpawner notebooks enforced by process scope.
    pub scopes: usize,
    /// Unit paths whose next incarnation the kernel places by itself.
    pub incarnations: usize,
    /// `guard run` processes on the node.
    pub agents: Vec<u32>,
}

fn open<K: aya::Pod, V: aya::Pod>(maps: &Path, name: &str) -> Result<Option<BpfHash<MapData, K, V>>> {
    let path = maps.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Some(
        BpfHash::try_from(Map::HashMap(data))
            .with_context(|| format!("{} is not the map it should be", path.display()))?,
    ))
}

/// Reads the state pinned under `pin_dir`; cgroup ids are named through the cgroup2 `mount`.
pub fn read(pin_dir: &Path, mount: &Path, proc_root: &Path) -> Result<Status> {
    let maps = pin_dir.join(format!("maps-v{}", guard_abi::PIN_LAYOUT));
    let mut links: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    links.sort();
    let mut by_id: std::collections::BTreeMap<u64, CgroupState> = Default::default();
    if let Some(m) = open::<u64, u32>(&maps, names::ENFORCED)? {
        for (id, flags) in m.iter().flatten() {
            if id != ENFORCED_ANY && flags & enforce_flags::ON != 0 {
                by_id.entry(id).or_insert(CgroupState { id, path: None, exec: None, egress: None }).exec = Some(flags);
            }
        }
    }
    if let Some(m) = open::<u64, u32>(&maps, names::EGRESS_CG)? {
        for (id, v) in m.iter().flatten() {
            by_id.entry(id).or_insert(CgroupState { id, path: None, exec: None, egress: None }).egress = Some(v);
        }
    }
    let scopes = open::<u32, Placement>(&maps, names::SCOPES)?.map(|m| m.keys().flatten().count()).unwrap_or(0);
    let incarnations =
        open::<u64, Placement>(&maps, names::INCARNATIONS)?.map(|m| m.keys().flatten().count()).unwrap_or(0);
    let mut resolver = CgroupResolver::new(mount.to_path_buf()).ok();
    let mut cgroups: Vec<CgroupState> = by_id.into_values().collect();
    for c in &mut cgroups {
        c.path = resolver.as_mut().and_then(|r| r.resolve(c.id));
    }
    cgroups.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Status { pin_dir: pin_dir.to_path_buf(), links, cgroups, scopes, incarnations, agents: agents(proc_root) })
}

/// Pids of `guard run` processes.
fn agents(proc_root: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let mut args = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned());
        let exe = args.next().unwrap_or_default();
        if exe.rsplit('/').next() == Some("guard") && args.next().as_deref() == Some("run") {
            out.push(pid);
        }
    }
    out
}

/// What a cgroup path is, in JupyterHub's terms.
fn who(path: &Path) -> String {
    match crate::discovery::workload::parse(path) {
        Workload::KubePod { pod_uid, .. } => format!("pod {pod_uid}"),
        Workload::Tljh { user } => format!("user {user} (TLJH unit)"),
        Workload::SystemdSpawner { user } => format!("user {user} (SystemdSpawner unit)"),
        Workload::Docker { container_id } => format!("container {}", container_id.get(..12).unwrap_or(&container_id)),
        _ => "-".into(),
    }
}

/// The status as text for a terminal.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pin directory: {}", s.pin_dir.display());
    match (s.links.is_empty(), s.agents.is_empty()) {
        (true, _) => {
            let _ = writeln!(out, "pinned programs: none (nothing outlives an agent here)");
        }
        (false, true) => {
            let _ = writeln!(
                out,
                "pinned programs: {} — NO agent is running: they keep enforcing what is listed below; `guard cleanup --pin-dir {}` ends it",
                s.links.len(),
                s.pin_dir.display()
            );
        }
        (false, false) => {
            let _ = writeln!(out, "pinned programs: {}, agent running (pid {:?})", s.links.len(), s.agents);
        }
    }
    let enforced = s.cgroups.iter().filter(|c| c.exec.is_some()).count();
    let _ = writeln!(
        out,
        "notebook cgroups: {enforced} enforced, {} judged for egress",
        s.cgroups.iter().filter(|c| c.egress.is_some()).count()
    );
    let _ = writeln!(out, "LocalProcessSpawner notebooks enforced by process: {}", s.scopes);
    let _ = writeln!(out, "units whose next incarnation the kernel places: {}", s.incarnations);
    if !s.cgroups.is_empty() {
        let _ = writeln!(out, "\n{:<8} {:<8} {:<34} cgroup", "exec", "egress", "notebook");
        for c in &s.cgroups {
            let exec = match c.exec {
                None => "-".to_string(),
                Some(f) => {
                    let mut e = "enforce".to_string();
                    if f & enforce_flags::TERMINALS != 0 {
                        e.push_str("+t");
                    }
                    e
                }
            };
            let egress = match c.egress {
                None => "-",
                Some(v) if v & guard_abi::EGRESS_ENFORCE != 0 => "enforce",
                Some(_) => "monitor",
            };
            let path =
                c.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("(gone: id {})", c.id));
            let whom = c.path.as_deref().map(who).unwrap_or_else(|| "-".into());
            let _ = writeln!(out, "{exec:<8} {egress:<8} {whom:<34} {path}");
        }
    }
    out
}
