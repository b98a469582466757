//! RFC 5424 syslog: one alert per message, the Falco JSON as MSG. Streams (TCP, TLS) use
//! RFC 6587 octet counting, so a message may hold any byte; UDP sends one datagram each.
//! Header fields are reduced to what RFC 5424 allows (printable ASCII, no spaces, bounded), so
//! a hostile hostname or rule name cannot forge a field or a frame.

use serde_json::Value;

/// local0.
const FACILITY: u8 = 16;

fn severity(priority: &str) -> u8 {
    match priority {
        "Emergency" => 0,
        "Alert" => 1,
        "Critical" => 2,
        "Error" => 3,
        "Warning" => 4,
        "Notice" => 5,
        "Informational" => 6,
        _ => 7,
    }
}

/// PRINTUSASCII (33..=126), at most `max` bytes, "-" when empty (the NILVALUE).
pub fn header_field(s: &str, max: usize) -> String {
    let v: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

/// One RFC 5424 message for an alert given as its JSON line.
pub fn message(alert_json: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(alert_json).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let pri = FACILITY * 8 + severity(s("priority"));
    let ts = match s("time") {
        // RFC 5424 allows at most 6 fractional digits.
        t if t.len() >= 27 && t.ends_with('Z') => format!("{}Z", &t[..26]),
        t => header_field(t, 40),
    };
    let mut out = format!(
        "<{pri}>1 {} {} notebook-guard {} {} - ",
        ts,
        header_field(s("hostname"), 255),
        std::process::id(),
        header_field(s("rule"), 32),
    )
    .into_bytes();
    // The JSON line already escapes every control character.
    out.extend_from_slice(alert_json.strip_suffix(b"\n").unwrap_or(alert_json));
    out
}

/// RFC 6587 octet-counting frame: `LEN SP MSG`.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alert(host: &str, rule: &str, cmd: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "time": "2026-11-22T06:30:00.123456789Z", "rule": rule, "priority": "Critical",
            "hostname": host, "output": "x", "output_fields": {"proc.cmdline": cmd}
        }))
        .unwrap()
    }

    #[test]
    fn header_and_frame() {
        let m = message(&alert("node-1", "notebook.fileless_exec", "a"));
        let text = String::from_utf8(m.clone()).unwrap();
        assert!(text.starts_with("<130>1 2026-11-22T06:30:00.123456Z node-1 notebook-guard "), "{text}");
        assert!(text.contains(" notebook.fileless_exec - {"), "{text}");
        let f = frame(&m);
        assert!(f.starts_with(format!("{} <130>", m.len()).as_bytes()));
    }

    proptest! {
        #[test]
        fn hostile_strings_cannot_break_frames_or_fields(host in any::<String>(), rule in any::<String>(), cmd in any::<String>()) {
            let json = alert(&host, &rule, &cmd);
            let m = message(&json);
            // One line, the count matches, the header has exactly its six fields.
            prop_assert!(!m.contains(&b'\n'));
            let f = frame(&m);
            let sp = f.iter().position(|b| *b == b' ').unwrap();
            let n: usize = std::str::from_utf8(&f[..sp]).unwrap().parse().unwrap();
            prop_assert_eq!(n, f.len() - sp - 1);
            let text = String::from_utf8_lossy(&m);
            let fields: Vec<&str> = text.splitn(8, ' ').collect();
            prop_assert_eq!(fields.len(), 8);
            for f in &fields[1..6] {
                prop_assert!(f.bytes().all(|b| (33..=126).contains(&b)), "{:?}", f);
            }
            // MSG is the alert, intact.
            let back: serde_json::Value = serde_json::from_str(fields[7]).unwrap();
            prop_assert_eq!(back["output_fields"]["proc.cmdline"].as_str().unwrap(), cmd.as_str());
        }
    }
}
