//! A DNS answer a notebook received from an allowed server (`dns_ingress`).

use std::net::IpAddr;

use guard_abi::dns::{wire_labels, DnsEvent, DNS_EVENT_ADDRS, DNS_NAME_WIRE};

use super::{ip, meta, read_record, DecodeError, Meta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// The query's sender.
    pub meta: Meta,
    /// The notebook (`EgressEvent::subject` of its later connects).
    pub subject: u64,
    /// The question, lower case, dot-separated, no final dot.
    pub name: String,
    pub addrs: Vec<IpAddr>,
    /// Addresses beyond `addrs` (allowed, not reported).
    pub more: u32,
    /// How long the addresses are allowed, when the name is an allowed one.
    pub ttl: u32,
    /// The policy's domain entries the name matched (0: none).
    pub domains: u64,
}

pub(super) fn decode(buf: &[u8]) -> Result<Dns, DecodeError> {
    use guard_abi::EventKind;
    let ev: DnsEvent = read_record(buf, std::mem::size_of::<DnsEvent>(), EventKind::Dns)?;
    let len = ev.qname_len as usize;
    let bad = DecodeError::DnsName { len, addrs: ev.n_addrs };
    if len == 0 || len >= DNS_NAME_WIRE || ev.n_addrs as usize > DNS_EVENT_ADDRS {
        return Err(bad);
    }
    let labels = wire_labels(&ev.qname[..len]).ok_or(bad)?;
    // Shown in alerts: bytes a name may not hold are escaped, never passed on.
    let name = labels
        .map(|l| {
            l.iter()
                .flat_map(|b| std::ascii::escape_default(b.to_ascii_lowercase()))
                .map(char::from)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".");
    let addrs = (0..ev.n_addrs as usize).map(|i| ip(ev.v4 & (1 << i) != 0, ev.addrs[i])).collect();
    Ok(Dns { meta: meta(&ev.hdr), subject: ev.subject, name, addrs, more: ev.more, ttl: ev.ttl, domains: ev.domains })
}
