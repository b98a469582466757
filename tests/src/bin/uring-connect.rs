//! Test helper: one TCP connect issued through io_uring (IORING_OP_CONNECT), bypassing the
//! connect(2) syscall entirely. Prints `ok` (connected, or refused by the peer), or the error, and exits 0 either way.

use std::{net::SocketAddr, os::fd::AsRawFd};

fn main() {
    let target: SocketAddr =
        std::env::args().nth(1).and_then(|a| a.parse().ok()).expect("usage: uring-connect IP:PORT");
    let domain = if target.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    let addr = socket2::SockAddr::from(target);
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let op =
        io_uring::opcode::Connect::new(io_uring::types::Fd(sock.as_raw_fd()), addr.as_ptr().cast(), addr.len()).build();
    // SAFETY: the socket and address outlive the submission, which we wait for.
    unsafe { ring.submission().push(&op).expect("sq full") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let res = ring.completion().next().expect("completion").result();
    // A refused connection reached the destination (nothing listens there): that is "ok".
    if res >= 0 || -res == libc::ECONNREFUSED {
        println!("ok");
    } else {
        println!("{}", std::io::Error::from_raw_os_error(-res));
    }
}
