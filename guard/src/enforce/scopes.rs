//! Process scopes: notebooks that share their cgroup with processes that are not notebooks
//! (a LocalProcessSpawner server in the hub's cgroup). The server carries a scope in its
//! `MARKS`, its descendants inherit it in the kernel at fork, and `SCOPES` holds what applies
//! to the scope. One scope per notebook (user and server name): a policy change rewrites the
//! scope's entry, not every process's mark.

use std::collections::HashMap;

use anyhow::{bail, Result};
use aya::maps::{HashMap as BpfHash, MapData};
use guard_abi::{names, Placement, MAX_SCOPES, SCOPE_ANY};

use crate::sensors::maps::MapWrite;

/// (user, server name) of a notebook.
pub type NotebookKey = (String, String);

pub struct Scopes {
    map: BpfHash<MapData, u32, Placement>,
    by_notebook: HashMap<NotebookKey, u32>,
    now: crate::IdMap<u32, Placement>,
}

impl Scopes {
    /// Takes over the map; scopes a previous agent left (their processes still carry them)
    /// stay until `adopt` or `assign` claims them.
    pub fn new(map: BpfHash<MapData, u32, Placement>) -> Self {
        let now = map.iter().flatten().filter(|(k, _)| *k != SCOPE_ANY).collect();
        Self { map, by_notebook: HashMap::new(), now }
    }

    /// The scope of `notebook`, with `placement` applying to it (written when it changed).
    pub fn assign(&mut self, notebook: &NotebookKey, placement: Placement) -> Result<u32> {
        let id = match self.by_notebook.get(notebook) {
            Some(id) => *id,
            None => {
                let Some(id) = (1..MAX_SCOPES).find(|id| !self.now.contains_key(id)) else {
                    bail!("all {} notebook scopes are in use", MAX_SCOPES - 1);
                };
                self.by_notebook.insert(notebook.clone(), id);
                id
            }
        };
        if self.now.get(&id) != Some(&placement) {
            self.map.insert(SCOPE_ANY, Placement::default(), 0).in_map(names::SCOPES, || "marking scopes on".into())?;
            self.map.insert(id, placement, 0).in_map(names::SCOPES, || format!("writing notebook scope {id}"))?;
            self.now.insert(id, placement);
        }
        Ok(id)
    }

    /// A scope a previous agent gave `notebook` (read from a running process's marks).
    pub fn adopt(&mut self, notebook: &NotebookKey, id: u32) {
        if id != SCOPE_ANY && id < MAX_SCOPES {
            self.by_notebook.entry(notebook.clone()).or_insert(id);
        }
    }

    pub fn any(&self) -> bool {
        !self.now.is_empty()
    }
}
