//! Kernel timestamps (CLOCK_BOOTTIME) → wall-clock time.

use nix::time::{clock_gettime, ClockId};
use time::{OffsetDateTime, UtcOffset};

#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Wall-clock nanoseconds at boot time zero.
    offset_ns: i128,
}

fn ns(id: ClockId) -> i128 {
    clock_gettime(id).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0)
}

impl BootClock {
    pub fn new() -> Self {
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self { offset_ns: real - boot }
    }

    pub fn wall(&self, boot_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.offset_ns + boot_ns as i128)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// RFC 3339 with nanoseconds, UTC (`…Z`), as Falco writes `time`.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        rfc3339(self.wall(boot_ns))
    }
}

impl Default for BootClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Always nine fractional digits, as Falco does, so lexical order is time order.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_now() {
        let c = BootClock::new();
        let now_boot = ns(ClockId::CLOCK_BOOTTIME) as u64;
        let diff = (c.wall(now_boot) - OffsetDateTime::now_utc()).abs();
        assert!(diff < time::Duration::seconds(1), "{diff}");
        assert!(c.rfc3339(now_boot).ends_with('Z'));
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_000_000_123).unwrap();
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000123Z");
    }
}
