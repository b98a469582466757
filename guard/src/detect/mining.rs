//! Miner command lines: what a miner is told on its command line, whatever the binary is
//! called — a stratum pool URL, XMRig's `--donate-level`, a pool (`-o HOST:PORT`) with a
//! wallet-shaped user (`-u 4…`), a mining algorithm — plus the operator's own patterns, read
//! from a file (a Kubernetes Secret: a public list makes evasion easy). Alerts name the
//! pattern by id only (`builtin:stratum-url`, `operator:3`), never by its text.

use crate::policy::mining::OperatorPatterns;

/// Algorithms miners are told to use (XMRig's `-a`/`--algo`, `--coin`).
const ALGOS: &[&str] =
    &["rx/0", "randomx", "cryptonight", "cn/r", "kawpow", "ethash", "etchash", "autolykos", "ghostrider", "argon2"];

/// A wallet address's shape: Monero (95 or 106 base58 characters from 4 or 8), Bitcoin
/// bech32, an Ethereum-style 0x address. A pool user is often `WALLET.WORKER`.
fn wallet_shaped(user: &str) -> bool {
    let w = user.split(['.', '+']).next().unwrap_or(user);
    let base58 = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() && !"0OIl".contains(c));
    (matches!(w.len(), 95 | 106) && (w.starts_with('4') || w.starts_with('8')) && base58(w))
        || (w.starts_with("bc1") && (42..=62).contains(&w.len()) && w[3..].chars().all(|c| c.is_ascii_alphanumeric()))
        || (w.len() == 42 && w.starts_with("0x") && w[2..].chars().all(|c| c.is_ascii_hexdigit()))
}

/// `HOST:PORT`, as a pool is given (`-o pool.example.org:3333`, `stratum+tcp://…` counted elsewhere).
fn host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok())
}

/// The id of the first pattern `argv` matches, if any.
pub fn matches(argv: &[String], operator: &OperatorPatterns) -> Option<String> {
    let lower: Vec<String> = argv.iter().map(|a| a.to_lowercase()).collect();
    if lower
        .iter()
        .any(|a| a.contains("stratum+tcp://") || a.contains("stratum+ssl://") || a.contains("stratum2+tcp://"))
    {
        return Some("builtin:stratum-url".into());
    }
    if lower.iter().any(|a| a == "--donate-level" || a.starts_with("--donate-level=")) {
        return Some("builtin:donate-level".into());
    }
    // Options given as `-o X` or `--url=X`.
    let value = |short: &str, long: &str| -> Option<&str> {
        lower.iter().enumerate().find_map(|(i, a)| {
            if a == short || a == long {
                lower.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(&format!("{long}="))
            }
        })
    };
    let pool = value("-o", "--url").is_some_and(host_port);
    let user = argv.iter().enumerate().find_map(|(i, a)| {
        if a == "-u" || a == "--user" {
            argv.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix("--user=")
        }
    });
    if pool && user.is_some_and(wallet_shaped) {
        return Some("builtin:pool-and-wallet".into());
    }
    if value("-a", "--algo").or_else(|| value("--coin", "--coin")).is_some_and(|v| ALGOS.contains(&v)) && pool {
        return Some("builtin:pool-and-algorithm".into());
    }
    let line = lower.join(" ");
    operator.iter().find(|(_, p)| line.contains(p)).map(|(n, _)| format!("operator:{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn miner_command_lines_are_known_by_what_they_say_not_by_name() {
        let none = OperatorPatterns::default();
        let wallet = format!("4{}", "A".repeat(94));
        assert_eq!(
            matches(&v("./kworker -o stratum+tcp://pool.example.org:3333"), &none).as_deref(),
            Some("builtin:stratum-url")
        );
        assert_eq!(matches(&v("./x --donate-level=1"), &none).as_deref(), Some("builtin:donate-level"));
        let a = v(&format!("/tmp/.cache/python3 -o pool.example.org:443 -u {wallet}.w1 -k"));
        assert_eq!(matches(&a, &none).as_deref(), Some("builtin:pool-and-wallet"));
        assert_eq!(
            matches(&v("./x -a rx/0 -o 198.51.100.8:3333"), &none).as_deref(),
            Some("builtin:pool-and-algorithm")
        );
        for benign in [
            "gcc -o out.o -c x.c",
            "ssh -o StrictHostKeyChecking=no host",
            "curl -o file.tar.gz https://x/",
            "tar -xf x.tar -C /tmp",
        ] {
            assert_eq!(matches(&v(benign), &none), None, "{benign}");
        }
        assert_eq!(
            matches(&v(&format!("git -c user.name=x commit -u {wallet}")), &none),
            None,
            "a wallet with no pool"
        );
        let ops = OperatorPatterns::parse("# the team's list\n\nsecret-pool.example\n");
        assert_eq!(matches(&v("./x --host SECRET-POOL.example"), &ops).as_deref(), Some("operator:3"));
        assert!(!format!("{ops:?}").contains("secret-pool"), "patterns never printed");
    }
}
