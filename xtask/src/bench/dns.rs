//! What egress by name costs traffic that has nothing to do with it: `dns_ingress` sits on the
//! receive path of every socket on the node (a cgroup skb program on the cgroup2 root) and
//! leaves at the source port for everything but DNS answers.

use super::*;

/// Datagrams per timed chunk (a few ms each here).
const UDP_CHUNK: u64 = 500;
const UDP_ROUNDS: usize = 25;

pub(super) fn dns(c: &mut Ctx) -> Result<()> {
    let name = "UDP datagrams received (loopback, notebook cgroup)";
    let (o, accounting) = steady_overhead(c, "udp", UDP_CHUNK, UDP_ROUNDS, |ns| 1e9 / ns)?;
    let (lo, hi) = min_max(&o.ratios);
    eprintln!("bench: {name}: ratio {:.3} ({lo:.3}–{hi:.3})", median(&o.ratios));
    let mut v = o.json("datagrams/s");
    v["cpu_accounting"] = accounting;
    let mut json = Map::new();
    json.insert(name.into(), v);
    c.results.insert("dns".into(), json.into());
    c.md.push(prose::render(
        prose::DNS,
        &[
            ("rounds", UDP_ROUNDS.to_string()),
            ("udp_chunk", UDP_CHUNK.to_string()),
            ("window_s", WINDOW.as_secs_f64().to_string()),
            ("rows", o.row(name, "datagrams/s")),
        ],
    )?);
    Ok(())
}
