//! Drains the kernel ring buffer into a user-space queue.
//!
//! Draining is decoupled from enrichment and sinks: a slow sink must not leave records in the
//! kernel ring, where they would be lost. The queue is bounded; what does not fit is counted.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch};

use super::decode::{decode, Event};

/// User-space counters of the reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub received: AtomicU64,
    /// Records that could not be decoded (logged).
    pub malformed: AtomicU64,
    /// Events dropped because the user-space queue was full.
    pub queue_full: AtomicU64,
}

pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    tx: mpsc::Sender<Event>,
    stats: Arc<ReaderStats>,
    poll: Duration,
}

impl RingReader {
    /// `poll` drains records that did not wake us (wake-up batching in the kernel).
    pub fn new(
        ring: RingBuf<MapData>,
        tx: mpsc::Sender<Event>,
        stats: Arc<ReaderStats>,
        poll: Duration,
    ) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and returns the same open fd for its lifetime,
        // which is the lifetime of this AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { ring, tx, stats, poll })
    }

    /// Runs until `stop` turns true, then drains once more so nothing already in the ring is
    /// left behind.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    match guard {
                        Ok(mut g) => g.clear_ready(),
                        Err(e) => tracing::error!(error = %e, "ring buffer poll failed"),
                    }
                }
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    self.drain();
                    return;
                }
            }
            self.drain();
        }
    }

    fn drain(&mut self) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            match decode(&item) {
                Ok(ev) => {
                    if self.tx.try_send(ev).is_err() {
                        self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, len = item.len(), "malformed ring buffer record");
                }
            }
        }
    }
}
