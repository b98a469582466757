//! A notebook process that reached the fan-out threshold (`fanout.rs` in the kernel).

use std::net::IpAddr;

use guard_abi::fanout::FanoutEvent;

use super::{cstr, ip, meta, read_record, DecodeError, Meta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fanout {
    pub meta: Meta,
    pub subject: u64,
    /// Distinct destinations in the window when the threshold was reached.
    pub destinations: u32,
    pub elapsed_ms: u32,
    /// The destination that reached it.
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: u8,
    pub comm: String,
}

pub(super) fn decode(buf: &[u8]) -> Result<Fanout, DecodeError> {
    let ev: FanoutEvent = read_record(buf, std::mem::size_of::<FanoutEvent>(), guard_abi::EventKind::Fanout)?;
    let addr = ip(ev.v4 != 0, ev.addr);
    Ok(Fanout {
        meta: meta(&ev.hdr),
        subject: ev.subject,
        destinations: ev.destinations,
        elapsed_ms: ev.elapsed_ms,
        addr,
        port: ev.port,
        protocol: ev.protocol,
        comm: String::from_utf8_lossy(cstr(&ev.comm)).into_owned(),
    })
}
