//! Copies of system binaries: a binary outside the system directories whose bytes equal a
//! system binary's (`cp /bin/bash ~/x`) is that binary under another name. Known per identity,
//! so each binary is read at most once.

use std::{io::Read, path::Path};

use crate::{
    policy::identity::RootIdentities,
    sensors::decode::{Exec, FileId},
};

/// Largest binary read to look for a copy of a system binary.
const MAX_HASHED: u64 = 64 << 20;

/// exe identity → the system binary it is a copy of (None: not a copy).
#[derive(Default)]
pub struct Copies(crate::IdMap<FileId, Option<FileId>>);

impl Copies {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The system binary `e`'s image is a copy of. Read from the running image if the process
    /// is still there, else from the file by path inside the notebook's root (short-lived
    /// processes are gone by now); its size first: a file no system binary matches in size is
    /// read no further.
    pub fn copy_of(&mut self, e: &Exec, exe_path: &Path, ids: &mut RootIdentities, proc_root: &Path) -> Option<FileId> {
        if let Some(c) = self.0.get(&e.exe) {
            return *c;
        }
        let sized = |ids: &mut RootIdentities, size: u64| size <= MAX_HASHED && ids.system_size_exists(size);
        let content = std::fs::File::open(proc_root.join(e.meta.tgid.to_string()).join("exe"))
            .and_then(|mut fh| {
                let size = fh.metadata()?.len();
                if !sized(ids, size) {
                    return Ok(None);
                }
                let mut b = Vec::new();
                (&mut fh).take(MAX_HASHED).read_to_end(&mut b).map(|_| Some(b))
            })
            .or_else(|_| -> std::io::Result<Option<Vec<u8>>> {
                let md = ids.root.stat(exe_path)?;
                if FileId::of(&md) != e.exe || !sized(ids, md.len()) {
                    return Ok(None);
                }
                ids.root.read(exe_path, MAX_HASHED).map(Some)
            });
        // Ok(None): certainly not a copy (remembered); Err: could not tell this time.
        match content {
            Ok(Some(c)) => {
                let found = ids.system_same_content(&c);
                self.0.insert(e.exe, found);
                found
            }
            Ok(None) => {
                self.0.insert(e.exe, None);
                None
            }
            Err(_) => None,
        }
    }
}
