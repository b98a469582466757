//! Network namespaces of the test's own: a notebook side and a world side.

use crate::*;

/// Two network namespaces made by the test and wired by a veth pair: `notebook` (where the
/// process under test runs) and `world`, which owns every destination address the tests use
/// (a metadata address, private and public-looking addresses, IPv6 ones). Nothing is routed
/// out of them: no packet leaves the test's namespaces.
pub struct TestNet {
    pub notebook: String,
    pub world: String,
}

/// Addresses owned by the `world` namespace.
pub const WORLD_ADDRS: &[&str] = &[
    "169.254.169.254/32",
    "100.100.100.200/32",
    "10.0.0.5/32",
    "10.0.0.53/32",
    "203.0.113.10/32",
    "fd00:ec2::254/128",
    "2001:db8::10/128",
];

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TestNet {
    pub fn new() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id());
        let (a, b) = (format!("nbg-nb-{tag}"), format!("nbg-world-{tag}"));
        let (va, vb) = (format!("nbga{tag}"), format!("nbgb{tag}"));
        let net = Self { notebook: a.clone(), world: b.clone() };
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        ip(&["link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b])?;
        for (ns, dev, v4, v6) in
            [(&a, &va, "10.200.0.2/24", "fd00:200::2/64"), (&b, &vb, "10.200.0.1/24", "fd00:200::1/64")]
        {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // ICMP datagram sockets open to every group, as containerd 2 and Docker set up pods.
        let ping = "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range";
        let out = std::process::Command::new("ip").args(["netns", "exec", &a, "sh", "-c", ping]).output()?;
        if !out.status.success() {
            bail!("opening ping sockets in {a}: {}", String::from_utf8_lossy(&out.stderr));
        }
        ip(&["-n", &a, "route", "add", "default", "via", "10.200.0.1"])?;
        ip(&["-n", &a, "-6", "route", "add", "default", "via", "fd00:200::1"])?;
        for addr in WORLD_ADDRS {
            let mut args = vec!["-n", b.as_str(), "addr", "add", addr, "dev", "lo"];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        Ok(net)
    }

    /// Runs `cmd` in the notebook namespace, inside `cgroup`: a shell joins the cgroup, then
    /// `ip netns exec` enters the namespace and execs the command.
    pub fn run_in(&self, cgroup: &TestCgroup, cmd: &[&str]) -> Result<String> {
        let quoted: Vec<String> = cmd.iter().map(|c| format!("'{c}'")).collect();
        let script = format!(
            "echo $$ > {}; exec ip netns exec {} {}",
            cgroup.path.join("cgroup.procs").display(),
            self.notebook,
            quoted.join(" ")
        );
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(script).output()?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.notebook]);
        let _ = ip(&["netns", "del", &self.world]);
    }
}
