//! Kernel struct offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs read fields at offsets the agent looks
//! up here at start-up and writes into the object's `.rodata`. Every field is checked for the
//! size the programs read, so a kernel that changed a type fails loudly instead of reporting
//! garbage.

use std::path::Path;

use btf_rs::{Backend, Btf, BtfType, Type};
use guard_abi::{recorder::NO_OFFSET, KernelOffsets, SyscallRegs};

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("reading BTF from {path}: {source}")]
    Btf { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {field} is {found} bytes, expected {expected}")]
    Size { field: String, found: usize, expected: usize },
    #[error("kernel BTF: {0} is a bitfield or not byte-aligned")]
    Bitfield(String),
    #[error("kernel BTF: {0} is not a struct or union")]
    NotComposite(String),
    #[error("kernel BTF: resolving {field}: {source}")]
    Resolve { field: String, source: btf_rs::Error },
}

pub struct OffsetResolver {
    btf: Btf,
}

impl OffsetResolver {
    /// The kernel's BTF mapped, not parsed: parsing all of vmlinux's ~150k types costs some
    /// 32 MiB of heap at start-up, the agent's peak; the few dozen lookups here cost a scan
    /// each instead. Kernels before 6.16 cannot map /sys/kernel/btf/vmlinux, so there it
    /// is parsed.
    pub fn from_file(path: &Path) -> Result<Self, OffsetError> {
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|source| OffsetError::Btf { path: path.display().to_string(), source })?;
        Ok(Self { btf })
    }

    /// Everything the programs read. Sizes are what the programs load: pointers and
    /// `unsigned long` 8 bytes, `pid_t`/`int`/`dev_t` 4 bytes.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, OffsetError> {
        let (inode_ctime_sec, inode_ctime_nsec) = self.inode_ctime()?;
        Ok(KernelOffsets {
            inode_ctime_sec,
            inode_ctime_nsec,
            task_pid: self.field("task_struct", &["pid"], 4)?,
            task_tgid: self.field("task_struct", &["tgid"], 4)?,
            task_real_parent: self.field("task_struct", &["real_parent"], 8)?,
            task_mm: self.field("task_struct", &["mm"], 8)?,
            task_exit_code: self.field("task_struct", &["exit_code"], 4)?,
            mm_arg_start: self.field("mm_struct", &["arg_start"], 8)?,
            mm_arg_end: self.field("mm_struct", &["arg_end"], 8)?,
            bprm_file: self.field("linux_binprm", &["file"], 8)?,
            bprm_filename: self.field("linux_binprm", &["filename"], 8)?,
            bprm_interp: self.field("linux_binprm", &["interp"], 8)?,
            bprm_argc: self.field("linux_binprm", &["argc"], 4)?,
            task_nsproxy: self.field("task_struct", &["nsproxy"], 8)?,
            nsproxy_mnt_ns: self.field("nsproxy", &["mnt_ns"], 8)?,
            mnt_ns_inum: self.field("mnt_namespace", &["ns", "inum"], 4)?,
            file_inode: self.field("file", &["f_inode"], 8)?,
            file_dentry: self.field("file", &["f_path", "dentry"], 8)?,
            dentry_name: self.field("dentry", &["d_name", "name"], 8)?,
            inode_ino: self.field("inode", &["i_ino"], 8)?,
            inode_nlink: self.field("inode", &["i_nlink"], 4)?,
            inode_sb: self.field("inode", &["i_sb"], 8)?,
            sb_dev: self.field("super_block", &["s_dev"], 4)?,
            inode_mode: self.field("inode", &["i_mode"], 2)?,
            task_files: self.field("task_struct", &["files"], 8)?,
            files_fdt: self.field("files_struct", &["fdt"], 8)?,
            fdtable_fd: self.field("fdtable", &["fd"], 8)?,
            mm_exe_file: self.field("mm_struct", &["exe_file"], 8)?,
            task_flags: self.field("task_struct", &["flags"], 4)?,
            task_cgroups: self.field("task_struct", &["cgroups"], 8)?,
            css_set_dfl_cgrp: self.field("css_set", &["dfl_cgrp"], 8)?,
            cgroup_root: self.field("cgroup", &["root"], 8)?,
            cgroup_kn: self.field("cgroup", &["kn"], 8)?,
            kernfs_node_id: self.field("kernfs_node", &["id"], 8)?,
        })
    }

    /// Where an inode keeps its change time: `i_ctime_sec` and `i_ctime_nsec` (6.11+),
    /// `__i_ctime` (6.6–6.10) or `i_ctime` (before), the last two a `struct timespec64` whose
    /// nanoseconds are a `long`: its low 4 bytes are read (BPF and its hosts are little-endian).
    fn inode_ctime(&self) -> Result<(u32, u32), OffsetError> {
        if let Ok(sec) = self.field("inode", &["i_ctime_sec"], 8) {
            return Ok((sec, self.field("inode", &["i_ctime_nsec"], 4)?));
        }
        for name in ["__i_ctime", "i_ctime"] {
            if let Ok(sec) = self.field("inode", &[name, "tv_sec"], 8) {
                return Ok((sec, self.field("inode", &[name, "tv_nsec"], 8)?));
            }
        }
        Err(OffsetError::NoMember { strukt: "inode".into(), member: "i_ctime_sec (or __i_ctime, i_ctime)".into() })
    }

    /// Where the syscall number and arguments are in `pt_regs`, for the architectures whose
    /// register names are known (x86_64: native in di/si/dx, i386 compat in bx/cx/dx).
    /// Elsewhere every offset is `NO_OFFSET` and the programs that need them report less.
    pub fn syscall_regs(&self) -> SyscallRegs {
        let reg = |name: &str| self.field("pt_regs", &[name], 8).unwrap_or(NO_OFFSET);
        let regs = SyscallRegs {
            nr: reg("orig_ax"),
            args: [reg("di"), reg("si"), reg("dx")],
            compat_args: [reg("bx"), reg("cx"), reg("dx")],
            _pad: 0,
        };
        if regs.nr == NO_OFFSET || regs.args.contains(&NO_OFFSET) || regs.compat_args.contains(&NO_OFFSET) {
            return SyscallRegs { nr: NO_OFFSET, args: [NO_OFFSET; 3], compat_args: [NO_OFFSET; 3], _pad: 0 };
        }
        regs
    }

    /// Byte offset of `strukt.path[0].path[1]…` (members of embedded structs, not pointers),
    /// looking through anonymous structs and unions as C does.
    pub fn field(&self, strukt: &str, path: &[&str], size: usize) -> Result<u32, OffsetError> {
        let name = format!("{strukt}.{}", path.join("."));
        let mut ty = self.named_struct(strukt)?;
        let mut bits = 0u32;
        let mut last_type = 0u32;
        for (i, member) in path.iter().enumerate() {
            let (off, type_id) = self
                .find_member(&ty, member)?
                .ok_or_else(|| OffsetError::NoMember { strukt: strukt.to_string(), member: path[..=i].join(".") })?;
            bits += off;
            last_type = type_id;
            if i + 1 < path.len() {
                ty = match self.strip(type_id, &name)? {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => return Err(OffsetError::NotComposite(path[..=i].join("."))),
                };
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(OffsetError::Bitfield(name));
        }
        let found = self.size_of(last_type, &name)?;
        if found != size {
            return Err(OffsetError::Size { field: name, found, expected: size });
        }
        Ok(bits / 8)
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        let types = self.btf.resolve_types_by_name(name).map_err(|_| OffsetError::NoStruct(name.into()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::NoStruct(name.into()))
    }

    /// (bit offset, type id) of `name` in `s`, descending into anonymous members.
    fn find_member(&self, s: &btf_rs::Struct, name: &str) -> Result<Option<(u32, u32)>, OffsetError> {
        for m in &s.members {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                continue;
            }
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let Some(type_id) = m.get_type_id() else {
                continue;
            };
            if mname == name {
                return Ok(Some((m.bit_offset(), type_id)));
            }
            if mname.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.strip(type_id, name)? {
                    if let Some((off, id)) = self.find_member(&inner, name)? {
                        return Ok(Some((m.bit_offset() + off, id)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut id: u32, field: &str) -> Result<Type, OffsetError> {
        for _ in 0..32 {
            let t = self
                .btf
                .resolve_type_by_id(id)
                .map_err(|source| OffsetError::Resolve { field: field.into(), source })?;
            match &t {
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    id = t.as_btf_type().and_then(|b| b.get_type_id()).unwrap_or(0);
                }
                _ => return Ok(t),
            }
        }
        Err(OffsetError::NotComposite(field.into()))
    }

    fn size_of(&self, id: u32, field: &str) -> Result<usize, OffsetError> {
        Ok(match self.strip(id, field)? {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            _ => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    #[test]
    fn resolves_every_field_on_this_kernel() {
        let r = OffsetResolver::from_file(Path::new(VMLINUX)).expect("this kernel has BTF");
        let o = r.kernel_offsets().unwrap();
        // `pid_t pid; pid_t tgid;` have been adjacent in task_struct for as long as BTF exists.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        assert!(o.file_dentry > 0 && o.dentry_name > 0);
    }

    #[test]
    fn missing_member_and_wrong_size_are_named() {
        let r = OffsetResolver::from_file(Path::new(VMLINUX)).unwrap();
        let e = r.field("task_struct", &["no_such_field"], 4).unwrap_err().to_string();
        assert!(e.contains("task_struct has no member no_such_field"), "{e}");
        let e = r.field("task_struct", &["pid"], 8).unwrap_err().to_string();
        assert!(e.contains("task_struct.pid is 4 bytes, expected 8"), "{e}");
        let e = r.field("no_such_struct_xyz", &["a"], 4).unwrap_err().to_string();
        assert!(e.contains("no struct no_such_struct_xyz"), "{e}");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn finds_the_syscall_registers() {
        let r = OffsetResolver::from_file(Path::new(VMLINUX)).unwrap();
        let regs = r.syscall_regs();
        // x86_64's pt_regs is also the ptrace ABI (user_regs_struct): di, si, dx, orig_ax.
        assert_eq!((regs.args, regs.nr), ([14 * 8, 13 * 8, 12 * 8], 15 * 8));
        assert_eq!(regs.compat_args, [5 * 8, 11 * 8, 12 * 8]);
    }

    #[test]
    fn looks_through_anonymous_unions() {
        // inode.i_nlink sits in an anonymous union with __i_nlink.
        let r = OffsetResolver::from_file(Path::new(VMLINUX)).unwrap();
        let a = r.field("inode", &["i_nlink"], 4).unwrap();
        let b = r.field("inode", &["__i_nlink"], 4).unwrap();
        assert_eq!(a, b);
    }
}
