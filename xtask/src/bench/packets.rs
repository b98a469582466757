//! What the packet-path programs cost traffic that has nothing to do with them: `dns_ingress`
//! and `stratum_egress` sit on the receive and send paths of every socket on the node (cgroup
//! skb programs on the cgroup2 root); the first leaves at the source port for everything but
//! DNS answers, the second at the protocol or a socket lookup for everything but a
//! notebook flow's first payload.

use super::*;

/// Datagrams per timed chunk (a few ms each here).
const UDP_CHUNK: u64 = 500;
const UDP_ROUNDS: usize = 25;

pub(super) fn packets(c: &mut Ctx) -> Result<()> {
    let name = "UDP datagrams received (loopback, notebook cgroup)";
    let (o, accounting) = steady_overhead(c, "udp", UDP_CHUNK, c.rounds(UDP_ROUNDS), |ns| 1e9 / ns)?;
    let (lo, hi) = min_max(&o.ratios);
    eprintln!("bench: {name}: ratio {:.3} ({lo:.3}–{hi:.3})", median(&o.ratios));
    let mut v = o.json("datagrams/s");
    v["cpu_accounting"] = accounting;
    let mut json = Map::new();
    json.insert(name.into(), v);
    c.results.insert("packets".into(), json.into());
    c.md.push(prose::render(
        prose::PACKETS,
        &[
            ("rounds", c.rounds(UDP_ROUNDS).to_string()),
            ("udp_chunk", UDP_CHUNK.to_string()),
            ("window_s", WINDOW.as_secs_f64().to_string()),
            ("rows", o.row(name, "datagrams/s")),
        ],
    )?);
    Ok(())
}
