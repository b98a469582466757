//! Test helper: one operation issued through io_uring, bypassing the syscall it replaces.
//! `uring-connect IP:PORT`: a TCP connect (IORING_OP_CONNECT) instead of connect(2);
//! `uring-connect packet-socket`: socket(AF_PACKET, SOCK_RAW) (IORING_OP_SOCKET) instead of
//! socket(2); `uring-connect packet-socket-async`: the same with IOSQE_ASYNC, so that the
//! kernel creates the socket in an io-wq worker thread rather than inside io_uring_enter.
//! Prints `ok` (connected or refused by the peer; socket created), or the error, and
//! exits 0 either way.

use std::{net::SocketAddr, os::fd::AsRawFd};

fn main() {
    let usage = "usage: uring-connect IP:PORT | packet-socket | packet-socket-async";
    let arg = std::env::args().nth(1).expect(usage);
    let mut ring = if arg == "packet-socket-sqpoll" {
        io_uring::IoUring::builder().setup_sqpoll(1000).build(4).expect("io_uring_setup")
    } else {
        io_uring::IoUring::new(4).expect("io_uring_setup")
    };
    if arg.starts_with("packet-socket") {
        let mut op = io_uring::opcode::Socket::new(libc::AF_PACKET, libc::SOCK_RAW, 0).build();
        if arg == "packet-socket-async" {
            op = op.flags(io_uring::squeue::Flags::ASYNC);
        }
        // SAFETY: the operation refers to no user memory.
        unsafe { ring.submission().push(&op).expect("sq full") };
        ring.submit_and_wait(1).expect("io_uring_enter");
        let res = ring.completion().next().expect("completion").result();
        if res >= 0 {
            // SAFETY: a descriptor the kernel just created for us.
            unsafe { libc::close(res) };
            println!("ok");
        } else {
            println!("{}", std::io::Error::from_raw_os_error(-res));
        }
        return;
    }
    let target: SocketAddr = arg.parse().expect(usage);
    let domain = if target.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    let addr = socket2::SockAddr::from(target);
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
