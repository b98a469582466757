//! A notebook TCP flow whose first payload was a mining call (`stratum.rs` in the kernel).

use std::net::IpAddr;

use guard_abi::{egress_verdict, stratum::StratumEvent};

use super::{cstr, ip, meta, read_record, DecodeError, Meta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stratum {
    /// The process that connected (the payload may have left from another context).
    pub meta: Meta,
    pub subject: u64,
    pub addr: IpAddr,
    pub port: u16,
    /// The JSON-RPC method, as sent (printable ASCII kept).
    pub method: String,
    /// Dropped in the kernel (enforce), not only seen.
    pub dropped: bool,
}

pub(super) fn decode(buf: &[u8]) -> Result<Stratum, DecodeError> {
    let ev: StratumEvent = read_record(buf, std::mem::size_of::<StratumEvent>(), guard_abi::EventKind::Stratum)?;
    let addr = ip(ev.v4 != 0, ev.addr);
    let method = cstr(&ev.method).iter().filter(|b| b.is_ascii_graphic()).map(|b| *b as char).collect();
    Ok(Stratum {
        meta: meta(&ev.hdr),
        subject: ev.subject,
        addr,
        port: ev.port,
        method,
        dropped: ev.verdict == egress_verdict::DENIED,
    })
}
