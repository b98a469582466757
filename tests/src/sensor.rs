//! The process sensor read synchronously by a test.

use crate::*;

/// A process sensor watching only the given cgroups, read synchronously by the test.
pub struct SensorHarness {
    pub sensor: ProcessSensor,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    pub malformed: u64,
}

impl SensorHarness {
    pub fn start(ring_bytes: u32, cgroups: &[&TestCgroup]) -> Result<Self> {
        let opts = SensorOptions { ring_bytes, watch_all: false, ..SensorOptions::default() };
        let mut sensor = ProcessSensor::load(&opts)?;
        for cg in cgroups {
            sensor.watch_cgroup(cg.id)?;
        }
        let ring = sensor.take_ring()?;
        Ok(Self { sensor, ring, malformed: 0 })
    }

    /// Everything currently in the ring.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Ok(ev) => out.push(ev),
                Err(_) => self.malformed += 1,
            }
        }
        out
    }

    /// Reads until `done` says the collected events are enough, or the timeout passes.
    pub fn collect_until(&mut self, timeout: Duration, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            all.extend(self.drain());
            if done(&all) || Instant::now() > deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The exec events of one process.
pub fn execs_of(events: &[Event], pid: Pid) -> Vec<&guard::sensors::decode::Exec> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Exec(x) if x.meta.tgid == pid.as_raw() as u32 => Some(&**x),
            _ => None,
        })
        .collect()
}
