//! Test helper: one operation issued through io_uring, bypassing the syscall it replaces.
//! `uring-connect IP:PORT [WAY]`: a TCP connect (IORING_OP_CONNECT) instead of connect(2);
//! `uring-connect packet-socket [WAY]`: socket(AF_PACKET, SOCK_RAW) (IORING_OP_SOCKET) instead
//! of socket(2). WAY says which task the kernel runs the request in: `inline` (the default:
//! the caller, inside io_uring_enter), `async` (IOSQE_ASYNC: an io-wq worker thread) or
//! `sqpoll` (the ring's SQPOLL thread, which takes the request from the shared ring).
//! Prints `ok` (connected or refused by the peer; socket created), or the error, and exits 0
//! either way.

use std::{net::SocketAddr, os::fd::AsRawFd};

const USAGE: &str = "usage: uring-connect IP:PORT|packet-socket [inline|async|sqpoll]";

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().expect(USAGE);
    let way = args.next().unwrap_or_else(|| "inline".into());
    let mut ring = match way.as_str() {
        "sqpoll" => io_uring::IoUring::builder().setup_sqpoll(1000).build(4).expect("io_uring_setup"),
        "inline" | "async" => io_uring::IoUring::new(4).expect("io_uring_setup"),
        _ => panic!("{USAGE}"),
    };
    let flags = if way == "async" { io_uring::squeue::Flags::ASYNC } else { io_uring::squeue::Flags::empty() };
    // Kept alive until the completion: the connect refers to both.
    let mut keep = None;
    let op = if what == "packet-socket" {
        io_uring::opcode::Socket::new(libc::AF_PACKET, libc::SOCK_RAW, 0).build()
    } else {
        let target: SocketAddr = what.parse().expect(USAGE);
        let domain = if target.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        let addr = socket2::SockAddr::from(target);
        let op =
            io_uring::opcode::Connect::new(io_uring::types::Fd(sock.as_raw_fd()), addr.as_ptr().cast(), addr.len())
                .build();
        keep = Some((sock, addr));
        op
    };
    // SAFETY: the operation refers only to `keep`, which outlives the completion we wait for.
    unsafe { ring.submission().push(&op.flags(flags)).expect("sq full") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let res = ring.completion().next().expect("completion").result();
    drop(keep);
    if what == "packet-socket" && res >= 0 {
        // SAFETY: a descriptor the kernel just created for us.
        unsafe { libc::close(res) };
    }
    // A refused connection reached the destination (nothing listens there): that is "ok".
    if res >= 0 || (what != "packet-socket" && -res == libc::ECONNREFUSED) {
        println!("ok");
    } else {
        println!("{}", std::io::Error::from_raw_os_error(-res));
    }
}
