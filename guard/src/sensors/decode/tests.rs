use super::*;

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: reading the bytes of a repr(C) value for the test.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), std::mem::size_of::<T>()) }
}

fn exec_head(args_len: usize, flags: u32) -> ExecHead {
    // SAFETY: all-zero is a valid ExecHead.
    let mut h: ExecHead = unsafe { std::mem::zeroed() };
    h.hdr.kind = EventKind::Exec as u32 | RECORD_FORMAT << 16;
    h.hdr.tgid = 42;
    h.flags = flags;
    h.args_len = args_len as u32;
    h.filename_len = 7;
    h.exe_name_len = 4;
    h.exe_dev = (8 << 20) | 1;
    h.exe_ino = 99;
    h.exe_ctime_sec = 1_700_000_000;
    h.exe_ctime_nsec = 5;
    h
}

/// A record as the kernel packs it: head, filename, interp, exe name, argv.
fn packed(h: &ExecHead, strings: &[&[u8]]) -> Vec<u8> {
    let mut rec = bytes_of(h).to_vec();
    strings.iter().for_each(|s| rec.extend_from_slice(s));
    rec
}

fn exec_with_args(args: &[u8], flags: u32) -> Vec<u8> {
    packed(&exec_head(args.len(), flags), &[b"/bin/sh", b"", b"dash", args])
}

#[test]
fn exec_record_is_variable_length() {
    let rec = exec_with_args(b"sh\0-c\0\0echo hi\0", 0);
    let Event::Exec(e) = decode(&rec).unwrap() else { panic!() };
    assert_eq!(*e.argv, ["sh", "-c", "", "echo hi"].map(OsString::from));
    assert_eq!(e.filename, PathBuf::from("/bin/sh"));
    assert_eq!(e.exe_name, OsString::from("dash"));
    assert_eq!(e.exe, FileId { dev: libc::makedev(8, 1), ino: 99, ctime_sec: 1_700_000_000, ctime_nsec: 5 });
    assert!(e.interp.is_none() && !e.argv_truncated);
    assert_eq!(rec.len(), EXEC_HEAD_LEN + 7 + 4 + 15, "only the strings' bytes follow the head");
}

#[test]
fn a_script_exec_carries_its_interpreter_between_filename_and_exe_name() {
    let mut h = exec_head(9, exec_flags::HAS_INTERP);
    h.filename_len = 8;
    h.interp_len = 15;
    h.exe_name_len = 10;
    let rec = packed(&h, &[b"./run.py", b"/usr/bin/python", b"python3.12", b"run.py\0x\0"]);
    let Event::Exec(e) = decode(&rec).unwrap() else { panic!() };
    assert_eq!(e.filename, PathBuf::from("./run.py"));
    assert_eq!(e.interp, Some(PathBuf::from("/usr/bin/python")));
    assert_eq!(e.exe_name, OsString::from("python3.12"));
    assert_eq!(*e.argv, ["run.py", "x"].map(OsString::from));
}

#[test]
fn truncated_argv_keeps_partial_last_argument() {
    let rec = exec_with_args(b"a\0bcd", exec_flags::ARGS_TRUNCATED);
    let Event::Exec(e) = decode(&rec).unwrap() else { panic!() };
    assert_eq!(*e.argv, ["a", "bcd"].map(OsString::from));
    assert!(e.argv_truncated);
}

#[test]
fn malformed_records_are_errors() {
    assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Short(3)));
    let mut rec = exec_with_args(b"abc\0", 0);
    rec.truncate(rec.len() - 2);
    assert!(matches!(decode(&rec), Err(DecodeError::Truncated { kind: "exec", .. })));
    rec.truncate(EXEC_HEAD_LEN - 1);
    assert!(matches!(decode(&rec), Err(DecodeError::Truncated { kind: "exec", .. })));
    let mut bad = exec_with_args(b"", 0);
    bad[0] = 77;
    assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(77)));
    // An earlier guard's record: layout 0 (no version), its filename where lengths are now.
    let mut old = exec_with_args(b"", 0);
    old[..4].copy_from_slice(&(EventKind::Exec as u32).to_ne_bytes());
    assert_eq!(decode(&old), Err(DecodeError::Format { found: 0 }));
    let mut huge = exec_with_args(b"", 0);
    let off = std::mem::offset_of!(ExecHead, args_len);
    huge[off..off + 4].copy_from_slice(&(ARGS_LEN as u32 + 1).to_ne_bytes());
    assert_eq!(decode(&huge), Err(DecodeError::ArgsLen(ARGS_LEN as u32 + 1)));
    let mut long_name = exec_with_args(b"", 0);
    let off = std::mem::offset_of!(ExecHead, exe_name_len);
    long_name[off..off + 2].copy_from_slice(&(DNAME_LEN as u16).to_ne_bytes());
    assert_eq!(
        decode(&long_name),
        Err(DecodeError::StringLen { field: "exe name", len: DNAME_LEN, max: DNAME_LEN - 1 })
    );
}
