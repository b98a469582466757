//! Where a notebook's hub is: the host and port of the `JUPYTERHUB_API_URL` (and activity URL)
//! its server was given, resolved as the notebook resolves it — an address as it is, else the
//! notebook root's `/etc/hosts`, else DNS to the notebook root's `/etc/resolv.conf` servers with
//! its search domains, asked from inside the notebook's network namespace (a Docker network's
//! embedded DNS, a pod's cluster DNS). Egress enforcement always lets notebooks reach it, as
//! Zero to JupyterHub's NetworkPolicy does: a notebook cut off from its hub cannot log its user
//! in or report activity.

use std::{
    fs,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};

use super::attribution::env_var;

/// The hub endpoints named in an environment block: (host, port).
pub fn hub_endpoints(environ: &[u8]) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = ["JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"]
        .iter()
        .filter_map(|k| env_var(environ, k))
        .filter_map(|u| host_port(&u))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `http(s)://host[:port]/…` → (host, port); IPv6 hosts in brackets.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map(|(_, a)| a).unwrap_or(authority);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        (h, tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// The addresses `host` has for the process whose `/proc/PID` is `proc_pid`. Blocking (DNS):
/// run it off the event path.
pub fn resolve(host: &str, proc_pid: &Path) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    let root = proc_pid.join("root");
    let from_hosts = in_hosts(&fs::read_to_string(root.join("etc/hosts")).unwrap_or_default(), host);
    if !from_hosts.is_empty() {
        return from_hosts;
    }
    let Ok(conf) = fs::read(root.join("etc/resolv.conf"))
        .map_err(|_| ())
        .and_then(|b| resolv_conf::Config::parse(b).map_err(|_| ()))
    else {
        return vec![];
    };
    let servers: Vec<SocketAddr> = conf.nameservers.iter().map(|ns| SocketAddr::new(ns.into(), 53)).collect();
    let names = candidates(host, conf.get_search().map(Vec::as_slice).unwrap_or(&[]), conf.ndots);
    let netns = proc_pid.join("ns/net");
    // The notebook's network namespace is entered by a thread of its own, which ends after.
    // Without CAP_SYS_ADMIN (the DaemonSet does not ask for it) the agent asks from its own
    // namespace, which reaches a cluster's DNS service but not a Docker network's 127.0.0.11.
    std::thread::spawn(move || -> Vec<IpAddr> {
        let entered = fs::File::open(&netns).map_err(|e| e.to_string()).and_then(|ns| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
        });
        if let Err(e) = entered {
            tracing::debug!(error = %e, netns = %netns.display(), "asking the notebook's DNS from the agent's own network namespace");
        }
        query_names(&names, &servers)
    })
    .join()
    .unwrap_or_default()
}

/// The names to ask for, in resolv.conf's order: as given first when it has `ndots` dots or
/// more, else each search domain appended first.
fn candidates(host: &str, search: &[String], ndots: u32) -> Vec<String> {
    if host.ends_with('.') {
        return vec![host.to_string()];
    }
    let searched = search.iter().map(|d| format!("{host}.{}.", d.trim_end_matches('.')));
    let plain = format!("{host}.");
    if host.matches('.').count() as u32 >= ndots {
        std::iter::once(plain).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(plain)).collect()
    }
}

/// Addresses of the first name any server answers for (A and AAAA).
pub fn query_names(names: &[String], servers: &[SocketAddr]) -> Vec<IpAddr> {
    for name in names {
        let Ok(n) = Name::from_ascii(name) else { continue };
        let mut found = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            found.extend(servers.iter().find_map(|s| ask(&n, rtype, *s)).unwrap_or_default());
        }
        if !found.is_empty() {
            return found;
        }
    }
    vec![]
}

/// One question to one server over UDP: the answer's addresses (Some even when empty), None
/// when the server did not answer.
fn ask(name: &Name, rtype: RecordType, server: SocketAddr) -> Option<Vec<IpAddr>> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name.clone(), rtype));
    let id = q.metadata.id;
    let wire = q.to_vec().ok()?;
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(800))).ok()?;
    sock.connect(server).ok()?;
    for _ in 0..2 {
        sock.send(&wire).ok()?;
        let mut buf = [0u8; 1500];
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let Ok(m) = Message::from_vec(&buf[..n]) else { continue };
        if m.metadata.id != id {
            continue;
        }
        if m.metadata.response_code != ResponseCode::NoError && m.metadata.response_code != ResponseCode::NXDomain {
            return None;
        }
        return Some(
            m.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect(),
        );
    }
    None
}

/// `host`'s addresses in an `/etc/hosts` text.
fn in_hosts(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip: IpAddr = f.next()?.parse().ok()?;
            f.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect()
}

/// `/proc/PID` of `pid` under `proc_root`.
pub fn proc_dir(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(host_port("http://hub:8081/hub/api"), Some(("hub".into(), 8081)));
        assert_eq!(host_port("https://Hub.Example.org/hub/api"), Some(("hub.example.org".into(), 443)));
        assert_eq!(host_port("http://[fd00::5]:8081/x"), Some(("fd00::5".into(), 8081)));
        assert_eq!(host_port("http://10.0.0.5/hub/api"), Some(("10.0.0.5".into(), 80)));
        assert_eq!(host_port("ftp://x/"), None);
        assert_eq!(host_port("http://:80/"), None);
        let env = b"JUPYTERHUB_API_URL=http://hub:8081/hub/api\0JUPYTERHUB_ACTIVITY_URL=http://hub:8081/hub/api/users/a/activity\0";
        assert_eq!(hub_endpoints(env), [("hub".to_string(), 8081)]);
    }

    #[test]
    fn names_follow_search_domains_and_ndots() {
        let search = ["ns1.svc.cluster.local".to_string(), "cluster.local".to_string()];
        assert_eq!(candidates("hub", &search, 5), ["hub.ns1.svc.cluster.local.", "hub.cluster.local.", "hub."]);
        assert_eq!(candidates("hub.example.org", &search, 1)[0], "hub.example.org.");
        assert_eq!(candidates("hub.", &search, 5), ["hub."]);
        assert_eq!(
            in_hosts("127.0.0.1 localhost\n10.0.0.5 hub hub.local # x\n", "HUB"),
            ["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_dns_answer_gives_the_addresses() {
        // A one-question DNS server on loopback answering A 10.0.0.5 for hub.ns1.svc.cluster.local.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let t = std::thread::spawn(move || {
            // Until the client stops asking.
            loop {
                let mut buf = [0u8; 512];
                let Ok((n, from)) = server.recv_from(&mut buf) else { return };
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                let query = q.queries[0].clone();
                let known = query.name().to_ascii() == "hub.ns1.svc.cluster.local.";
                if known && query.query_type() == RecordType::A {
                    let rec = hickory_proto::rr::Record::from_rdata(
                        query.name().clone(),
                        30,
                        RData::A(hickory_proto::rr::rdata::A("10.0.0.5".parse().unwrap())),
                    );
                    r.answers.push(rec);
                }
                if !known {
                    r.metadata.response_code = ResponseCode::NXDomain;
                }
                r.add_query(query);
                server.send_to(&r.to_vec().unwrap(), from).unwrap();
            }
        });
        let names = candidates("hub", &["ns1.svc.cluster.local".into()], 5);
        assert_eq!(query_names(&names, &[addr]), ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        t.join().unwrap();
    }
}
