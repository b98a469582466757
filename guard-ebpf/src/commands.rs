//! What sanctioned kernels may start, by bytes rather than identity: the exact commands the
//! policy names (`KERNEL_COMMANDS`, with a random-tail form) and trusted `#!` scripts by path
//! per mount namespace (`LAUNCHERS`). Keys are whole masked words, with no byte loop.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use guard_abi::{ByteKey, BYTE_KEY_MAX, MAX_KERNEL_COMMANDS, MAX_LAUNCHERS, RANDOM_TAIL};

use crate::{
    read::{read, read_ptr},
    CONFIG,
};

/// Exact commands (argv blocks, as `ByteKey`s) a sanctioned non-Python kernel runs through a
/// shell at start-up (R's `system("uname -a")`), from the policy: they and what they start run.
#[map]
static KERNEL_COMMANDS: HashMap<ByteKey, u32> = HashMap::with_max_entries(MAX_KERNEL_COMMANDS, 0);

/// Trusted `#!` scripts by path, per mount namespace, where the notebook's user cannot change
/// what the path leads to (the agent checked every directory on it) → `allow_class`: a
/// sanctioned kernel's launcher, or a helper.
#[map]
static LAUNCHERS: HashMap<ByteKey, u32> = HashMap::with_max_entries(MAX_LAUNCHERS, 0);

/// A command with its random tail replaced, to look up again (`is_kernel_command`); room for
/// `byte_key`'s whole-word reads.
#[map]
static COMMAND_TMP: PerCpuArray<[u64; BYTE_KEY_MAX / 8 + 1]> = PerCpuArray::with_max_entries(1, 0);

/// `len` bytes at `p` (map memory with room for `BYTE_KEY_MAX` bytes) as a key in `scope`.
/// Whole words, masked: no loop over bytes.
#[inline(always)]
/// # Safety
/// `p` points to at least `len` readable bytes of this CPU's WIRE tail.
unsafe fn byte_key(scope: u32, p: *const u8, len: u32) -> ByteKey {
    let len = len as usize & (BYTE_KEY_MAX - 1);
    let mut key = ByteKey { scope, len: len as u32, words: [0; BYTE_KEY_MAX / 8] };
    let mut i = 0;
    while i < BYTE_KEY_MAX / 8 {
        // SAFETY: `p` points into the per-CPU record with BYTE_KEY_MAX bytes of room after it
        // (the tail is sized for ARGS_LEN); bytes past `len` are masked off.
        let w = core::ptr::read_unaligned(p.add(i * 8).cast::<u64>());
        key.words[i] = w & ByteKey::word_mask(len, i);
        i += 1;
    }
    key
}

// `is_kernel_command` checks the tail's bytes one by one, written out.
const _: () = assert!(RANDOM_TAIL == 6);

/// The argv block (`args_len` bytes) is one the policy names for sanctioned kernels: as it
/// is, or with the `RANDOM_TAIL` letters and digits before its final NUL read as `?`s.
#[inline(always)]
/// # Safety
/// `args` points to `args_len` readable bytes of this CPU's WIRE tail.
pub(crate) unsafe fn is_kernel_command(args: *const u8, args_len: u32) -> bool {
    let len = args_len as usize;
    if len >= BYTE_KEY_MAX {
        return false;
    }
    if KERNEL_COMMANDS.get(&byte_key(0, args, args_len)).is_some() {
        return true;
    }
    if len < RANDOM_TAIL + 2 {
        return false;
    }
    let Some(tmp) = COMMAND_TMP.get_ptr_mut(0) else { return false };
    let buf = tmp.cast::<u8>();
    let mut i = 0;
    while i < BYTE_KEY_MAX / 8 {
        // SAFETY: `args` has BYTE_KEY_MAX bytes of room (see `byte_key`); `tmp` is a per-CPU
        // map value of BYTE_KEY_MAX + 8 bytes.
        *tmp.cast::<u64>().add(i) = core::ptr::read_unaligned(args.add(i * 8).cast::<u64>());
        i += 1;
    }
    // Straight-line checks of the tail's bytes (no byte loop in the decision); the masks keep
    // every offset inside the buffer for the verifier.
    // Read back through a volatile load: LLVM otherwise proves the masks below redundant
    // (`len` was bounded above) and drops them, and verifiers before 6.x cannot follow that
    // bound through the 32-bit arithmetic.
    let start = core::ptr::read_volatile(&(len - RANDOM_TAIL - 1)) & (BYTE_KEY_MAX - 1);
    let tail = |k: usize| buf.add((start + k) & (BYTE_KEY_MAX - 1));
    let random = |b: u8| b.is_ascii_alphanumeric();
    // SAFETY: every `tail(k)` is inside the scratch buffer (masked below BYTE_KEY_MAX).
    if !(random(*tail(0))
        && random(*tail(1))
        && random(*tail(2))
        && random(*tail(3))
        && random(*tail(4))
        && random(*tail(5)))
    {
        return false;
    }
    *tail(0) = b'?';
    *tail(1) = b'?';
    *tail(2) = b'?';
    *tail(3) = b'?';
    *tail(4) = b'?';
    *tail(5) = b'?';
    KERNEL_COMMANDS.get(&byte_key(0, buf, args_len)).is_some()
}

/// The `allow_class` of the exec'd path (`len` bytes at `path`) as a trusted script in the
/// task's mount namespace; 0 if it is none.
#[inline(always)]
/// # Safety
/// `path` points to `len` readable bytes of this CPU's WIRE tail; `task` is read through probe-read helpers only.
pub(crate) unsafe fn script_class(path: *const u8, len: u16, task: *const u8) -> u32 {
    if len as usize >= BYTE_KEY_MAX {
        return 0;
    }
    let nsproxy = read_ptr(task, conf!(offsets.task_nsproxy));
    let mnt_ns = read_ptr(nsproxy, conf!(offsets.nsproxy_mnt_ns));
    let inum = read::<u32>(mnt_ns, conf!(offsets.mnt_ns_inum));
    LAUNCHERS.get(&byte_key(inum, path, len as u32)).copied().unwrap_or(0)
}
