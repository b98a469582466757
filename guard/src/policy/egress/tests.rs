//! The compiled egress policy, judged in user space as the kernel judges it.

use super::*;

/// Allowed or refused (by a switch or an explicit deny alike).
fn ev(spec: &EgressSpec, ip: &str, proto: u8, port: u16) -> u32 {
    let action = evaluate(&spec.compile(1), ip.parse().unwrap(), proto, port);
    if refused(action) {
        EGRESS_DENY
    } else {
        EGRESS_ALLOW
    }
}

#[test]
fn a_port_allow_list_and_banned_addresses_as_public_hubs_write_them() {
    // mybinder.org's shape: the web, git and DNS out, nothing else; a banned pool range.
    let s: EgressSpec = serde_yaml_ng::from_str(
        "nonPrivateIPs: false\nallow:\n  - {cidr: 0.0.0.0/0, ports: [80, 443, 9418], protocol: tcp}\n  - {cidr: \"::/0\", ports: [80, 443, 9418], protocol: tcp}\ndeny:\n  - {cidr: 198.51.100.0/24}\n",
    )
    .unwrap();
    assert_eq!(ev(&s, "203.0.113.10", 6, 443), EGRESS_ALLOW);
    assert_eq!(ev(&s, "2001:db8::10", 6, 9418), EGRESS_ALLOW, "git");
    assert_eq!(ev(&s, "203.0.113.10", 6, 3333), EGRESS_DENY, "a pool port");
    assert_eq!(ev(&s, "203.0.113.10", 17, 443), EGRESS_DENY, "QUIC is not on the list");
    assert_eq!(ev(&s, "198.51.100.8", 6, 443), EGRESS_DENY, "banned, even on an allowed port");
    assert_eq!(ev(&s, "10.96.0.10", 17, 53), EGRESS_ALLOW, "DNS (the dns switch)");
    assert_eq!(ev(&s, "169.254.169.254", 6, 80), EGRESS_DENY, "metadata");
}

#[test]
fn names_may_allow_what_a_switch_refuses_never_an_explicit_deny() {
    let s: EgressSpec = serde_yaml_ng::from_str(
        "nonPrivateIPs: false\nallow:\n  - {domain: pypi.org, ports: [443], protocol: tcp}\ndeny:\n  - {cidr: 203.0.113.66}\n",
    )
    .unwrap();
    let e = s.compile(1);
    let at = |ip: &str| evaluate(&e, ip.parse().unwrap(), 6, 443);
    assert_eq!(at("198.51.100.1"), EGRESS_DENY_SWITCH, "nonPrivateIPs off");
    assert_eq!(at("10.0.0.5"), EGRESS_DENY_SWITCH, "privateIPs off");
    assert_eq!(at("203.0.113.66"), EGRESS_DENY, "the deny list");
    assert_eq!(at("169.254.169.254"), EGRESS_DENY, "metadata");
    assert_eq!(at("169.254.1.1"), EGRESS_DENY, "link-local");
    assert!(s.problems().is_empty());
    let t = s.domain_tables(1);
    assert_eq!((t.match_name("pypi.org"), t.port_mask(6, 443), t.port_mask(6, 80)), (1, 1, 0));
    assert_eq!((t.ttl.min, t.ttl.max), (60, 3600));
}

#[test]
fn entries_the_policy_cannot_mean_are_named() {
    let bad = |yaml: &str| -> Vec<String> {
        let s: EgressSpec = serde_yaml_ng::from_str(yaml).unwrap();
        s.problems().into_iter().map(|(k, _, m)| format!("{k}: {m}")).collect()
    };
    assert_eq!(bad("allow:\n  - {ports: [443]}\n"), ["allow[0]: an entry needs `cidr` or `domain`"]);
    assert!(bad("allow:\n  - {cidr: 10.0.0.1, domain: a.org}\n")[0].contains("not both"));
    assert!(bad("deny:\n  - {domain: a.org}\n")[0].starts_with("deny[0].domain: names are allowed, not denied"));
    assert!(bad("dnsTTL: {min: 10, max: 5}\n")[0].starts_with("dnsTTL: "));
    let many: String = (0..65).map(|i| format!("  - {{domain: n{i}.org}}\n")).collect();
    assert!(bad(&format!("allow:\n{many}"))[0].contains("65 `domain` entries; at most 64"));
    let err = serde_yaml_ng::from_str::<EgressSpec>("allow:\n  - {domain: 10.0.0.5}\n").unwrap_err().to_string();
    assert!(err.contains("cidr: 10.0.0.5"), "{err}");
}

#[test]
fn z2jh_defaults() {
    let s = EgressSpec::default();
    assert_eq!(ev(&s, "203.0.113.10", 6, 443), EGRESS_ALLOW, "public");
    assert_eq!(ev(&s, "10.0.0.5", 6, 5432), EGRESS_DENY, "private: other pods");
    assert_eq!(ev(&s, "10.96.0.10", 17, 53), EGRESS_ALLOW, "cluster DNS");
    assert_eq!(ev(&s, "169.254.169.254", 6, 80), EGRESS_DENY, "metadata");
    assert_eq!(ev(&s, "169.254.169.254", 17, 53), EGRESS_DENY, "metadata even on 53");
    assert_eq!(ev(&s, "100.100.100.200", 6, 80), EGRESS_DENY);
    assert_eq!(ev(&s, "fd00:ec2::254", 6, 80), EGRESS_DENY);
    assert_eq!(ev(&s, "::ffff:169.254.169.254", 6, 80), EGRESS_DENY, "v4-mapped");
    assert_eq!(ev(&s, "2001:db8::10", 6, 443), EGRESS_ALLOW);
    assert_eq!(ev(&s, "fd12::1", 6, 443), EGRESS_DENY, "ULA is private");
}

#[test]
fn the_hub_is_reachable_on_its_port_whatever_the_switches_say() {
    let s: EgressSpec = serde_yaml_ng::from_str("nonPrivateIPs: false\n").unwrap();
    let mut entries = s.compile(1);
    entries.extend(hub_entries(1, &[("10.0.0.5".parse().unwrap(), 8081), ("fd00::5".parse().unwrap(), 8081)]));
    let ev = |ip: &str, proto, port| match evaluate(&entries, ip.parse().unwrap(), proto, port) {
        EGRESS_ALLOW => EGRESS_ALLOW,
        _ => EGRESS_DENY,
    };
    assert_eq!(ev("10.0.0.5", 6, 8081), EGRESS_ALLOW, "the hub, in a private range");
    assert_eq!(ev("::ffff:10.0.0.5", 6, 8081), EGRESS_ALLOW, "v4-mapped");
    assert_eq!(ev("fd00::5", 6, 8081), EGRESS_ALLOW);
    assert_eq!(ev("10.0.0.5", 6, 5432), EGRESS_DENY, "another port of the hub's host");
    assert_eq!(ev("10.0.0.5", 17, 8081), EGRESS_DENY, "UDP");
    assert_eq!(ev("10.0.0.6", 6, 8081), EGRESS_DENY, "another private address");
}

#[test]
fn explicit_lists_and_switches() {
    let s: EgressSpec = serde_yaml_ng::from_str(
        "nonPrivateIPs: false\nallow:\n  - {cidr: 10.1.2.0/24, ports: [5432], protocol: tcp}\n  - {cidr: 203.0.113.0/24}\ndeny:\n  - {cidr: 203.0.113.66/32, ports: [443]}\n",
    )
    .unwrap();
    assert_eq!(ev(&s, "10.1.2.3", 6, 5432), EGRESS_ALLOW);
    assert_eq!(ev(&s, "10.1.2.3", 17, 5432), EGRESS_DENY, "tcp only");
    assert_eq!(ev(&s, "10.1.2.3", 6, 22), EGRESS_DENY);
    assert_eq!(ev(&s, "203.0.113.9", 6, 443), EGRESS_ALLOW);
    assert_eq!(ev(&s, "203.0.113.66", 6, 443), EGRESS_DENY, "deny list");
    assert_eq!(ev(&s, "198.51.100.1", 6, 443), EGRESS_DENY, "nonPrivateIPs off");
    assert!(serde_yaml_ng::from_str::<EgressSpec>("privateIps: true\n").is_err(), "Z2JH spelling only");
    assert_eq!(
        parse_cidr("10.0.0.0/33").unwrap_err(),
        "prefix length 33 is longer than the 32 bits of an IPv4 address"
    );
    assert!(parse_cidr("fd00::/129").unwrap_err().contains("128 bits of an IPv6"));
    assert!(parse_cidr("10.0.0.300/8").unwrap_err().contains("not an IPv4 or IPv6 address"));
    assert_eq!(parse_cidr("10.1.2.3").unwrap(), "10.1.2.3/32".parse::<IpNet>().unwrap(), "one host");
}
