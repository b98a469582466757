//! Drains the kernel ring buffer into a user-space queue.
//!
//! Draining is decoupled from enrichment and sinks: a slow sink must not leave records in the
//! kernel ring, where they would be lost. The queue is bounded (in events and in bytes); what
//! does not fit is counted. Each drain hands over one batch: one wake-up of the pipeline per drain, not one
//! per event (under an exec storm the wake-ups were a quarter of the agent's CPU).
//!
//! A batch holds the records as the kernel wrote them; the pipeline decodes each one just
//! before handling it. Decoding a whole drain here made hundreds of allocations per drain before
//! the first was freed, more than the allocator's per-thread cache holds, and its slow path
//! was a tenth of the agent's CPU under an exec storm.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch};

use super::decode::{decode, DecodeError, Event};

/// Longest wait between drains while records keep coming, in units of the configured poll
/// interval (100 ms at the default 2 ms), and never more than [`MAX_GAP`]. A drain after a
/// pause starts with cold caches and costs two thread wake-ups, far more than its records:
/// under an exec storm the agent spent 5.0 µs per exec draining every 24 ms and 2.8 µs every
/// 100 ms; at a steady 300 execs/s, which kept the gap at 2 ms, 120 µs. The records wait in
/// the ring meanwhile (a storm fills well under 256 KiB in that time, and the kernel wakes
/// the reader past that), so in a stream an alert is up to this late.
const FLOW_BACKOFF: u32 = 50;
/// The longest gap at any poll setting (at `--poll-ms 1000`, 50× would be 50 s).
const MAX_GAP: Duration = Duration::from_secs(1);
/// Once records come densely, the first timed look comes after `poll / FIRST_LOOK_DIVISOR`.
const FIRST_LOOK_DIVISOR: u32 = 4;
/// A wake-up's drain finding this many records means they come densely (the kernel woke us
/// for the first; the rest came while we woke).
const DENSE_BATCH: usize = 2;
/// An idle agent drains at least this often even without a wake-up.
const IDLE_SAFETY_NET: Duration = Duration::from_millis(500);

/// Spare batch buffers kept at most: one per batch in flight is plenty.
const MAX_SPARES: usize = 4;
/// A buffer larger than this (a burst's) is freed rather than kept. An exec record is about
/// 150 bytes: this keeps a busy drain's buffer (thousands of execs) for the next one.
const MAX_SPARE_BYTES: usize = 1 << 20;

/// The records of one drain, copied out of the kernel ring.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<usize>,
}

impl Batch {
    fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of records held.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The records, in the order the kernel wrote them.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(a, b)| &self.bytes[a..b])
    }

    /// The records decoded, one at a time.
    pub fn events(&self) -> impl Iterator<Item = Result<Event, (DecodeError, usize)>> + '_ {
        self.records().map(|r| decode(r).map_err(|e| (e, r.len())))
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }
}

/// Emptied batch buffers handed back by the consumer for the next drains. A fresh buffer per
/// drain cost page faults every time (the allocator returned its pages when the consumer freed
/// it): a tenth of the agent's CPU under an exec storm.
#[derive(Clone, Default)]
pub struct Spares(Arc<Mutex<Vec<Batch>>>);

impl Spares {
    /// Takes back a batch the consumer has emptied.
    pub fn give(&self, mut batch: Batch) {
        batch.clear();
        if batch.heap_bytes() > MAX_SPARE_BYTES {
            return;
        }
        if let Ok(mut s) = self.0.lock() {
            if s.len() < MAX_SPARES {
                s.push(batch);
            }
        }
    }

    fn take(&self) -> Batch {
        self.0.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default()
    }
}

/// User-space counters of the reader.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub received: AtomicU64,
    /// Records that could not be decoded (logged; counted by the consumer, which decodes).
    pub malformed: AtomicU64,
    /// Records in another guard version's layout, left in an adopted ring (counted by the
    /// consumer).
    pub other_format: AtomicU64,
    /// Events dropped because the user-space queue was full.
    pub queue_full: AtomicU64,
    /// Events handed over and not yet handled (the consumer subtracts what it handled).
    pub in_flight: AtomicUsize,
    /// Their bytes, likewise.
    pub in_flight_bytes: AtomicUsize,
}

impl ReaderStats {
    /// A batch of `n` records, `bytes` long, handed to the consumer.
    fn queued(&self, n: usize, bytes: usize) {
        self.in_flight.fetch_add(n, Ordering::AcqRel);
        self.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// A batch handed over earlier is done with (handled, or never received).
    pub fn settled(&self, n: usize, bytes: usize) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
        self.in_flight_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// How much may wait between the reader and the consumer. Records wait undecoded, an exec's
/// about 150 bytes and at most 6 KiB: the bytes bound keeps a stalled consumer from holding
/// the count's worth of the largest records.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimit {
    pub events: usize,
    pub bytes: usize,
}

pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Tells the kernel we drain on our own timer, so it does not wake us per drain.
    polling: Option<Array<MapData, u32>>,
    tx: mpsc::UnboundedSender<Batch>,
    spares: Spares,
    stats: Arc<ReaderStats>,
    poll: Duration,
    /// Most queued at once.
    capacity: QueueLimit,
    /// The last drain's size in records and bytes: a batch is reserved at about that size,
    /// rather than grown (and moved) through every power of two on the way.
    last_batch: (usize, usize),
}

impl RingReader {
    /// `poll` drains records that did not wake us (wake-up batching in the kernel).
    pub fn new(
        ring: RingBuf<MapData>,
        polling: Option<Array<MapData, u32>>,
        tx: mpsc::UnboundedSender<Batch>,
        spares: Spares,
        stats: Arc<ReaderStats>,
        poll: Duration,
        capacity: QueueLimit,
    ) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and returns the same open fd for its lifetime,
        // which is the lifetime of this AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { ring, polling, tx, spares, stats, poll, capacity, last_batch: (0, 0) })
    }

    /// Starts the reader `make` builds on a thread of its own, with its own runtime (whose I/O
    /// driver then serves the ring's wake-ups), and returns once it is registered. Enrichment
    /// runs synchronously on the agent's workers (a cgroup scan, a new root's identities);
    /// sharing them, the reader's timer and the kernel's wake-up were sometimes served a few
    /// hundred milliseconds late, long enough for a small ring to fill.
    pub fn spawn_thread(
        make: impl FnOnce() -> std::io::Result<Self> + Send + 'static,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("ring-reader".into()).spawn(move || {
            let started = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|rt| {
                let reader = {
                    let _entered = rt.enter();
                    make()?
                };
                Ok((reader, rt))
            });
            match started {
                Ok((reader, rt)) => {
                    let _ = ready_tx.send(Ok(()));
                    rt.block_on(reader.run(stop));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("the ring reader thread ended before it started")),
        }
    }

    /// Runs until `stop` turns true, then drains once more so nothing already in the ring is
    /// left behind.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // Sparse records: wait for the kernel's wake-up (it wakes us for the first record into
        // an empty ring), so an idle agent costs nothing and each alert goes out at once. Dense
        // records (a wake-up's drain finds several, or comes within `poll` of the last one, so
        // at most a wake-up per `poll` is spent on them before the timer takes over):
        // drain on a timer that starts short and doubles while records keep coming, up to
        // FLOW_BACKOFF × `poll`, with the kernel told
        // not to wake us until `wakeup_bytes` wait (an exec storm must cost neither a wake-up
        // per record nor two per drain). The idle timeout is a safety net.
        //
        // Going to the timer after any record cost light traffic its latency: a notebook
        // running commands one after another has each exec follow the last one's exit by well
        // under a millisecond, and the exec then waited for the timer (up to 2 ms at the
        // default poll) instead of waking us.
        let mut gap = self.poll;
        let mut flowing = false;
        let mut last_found: Option<tokio::time::Instant> = None;
        loop {
            if flowing {
                tokio::select! {
                    _ = tokio::time::sleep(gap) => {}
                    // While we poll, the kernel wakes us only once `wakeup_bytes` wait: drain
                    // then, or a ring that fills faster than the timer empties it loses records.
                    guard = self.ring.readable_mut() => {
                        match guard {
                            Ok(mut g) => g.clear_ready(),
                            Err(e) => tracing::error!(error = %e, "ring buffer poll failed"),
                        }
                    }
                    _ = stop.changed() => {
                        self.set_polling(false);
                        self.drain();
                        return;
                    }
                }
            } else {
                tokio::select! {
                    guard = self.ring.readable_mut() => {
                        match guard {
                            Ok(mut g) => g.clear_ready(),
                            Err(e) => tracing::error!(error = %e, "ring buffer poll failed"),
                        }
                    }
                    _ = tokio::time::sleep(IDLE_SAFETY_NET) => {}
                    _ = stop.changed() => {
                        self.drain();
                        return;
                    }
                }
            }
            let mut n = self.drain();
            let now = tokio::time::Instant::now();
            if n > 0 && !flowing {
                let dense = n >= DENSE_BATCH || last_found.is_some_and(|t| now - t < self.poll);
                if dense {
                    self.set_polling(true);
                    gap = self.poll / FIRST_LOOK_DIVISOR;
                    flowing = true;
                }
                last_found = Some(now);
                continue;
            }
            if n == 0 && flowing {
                // Going idle: clear the flag first, then look once more, so a record that
                // came while the kernel thought we were polling is not left waiting.
                self.set_polling(false);
                n = self.drain();
                if n > 0 {
                    self.set_polling(true);
                }
            }
            if n > 0 {
                last_found = Some(now);
                // Records keep coming: look less often. Backing off only while each drain found
                // a crowd left a steady stream too thin for one (up to 4000 records/s at the
                // default poll) drained every `poll`, at a cost per exec forty times a storm's.
                gap = (gap * 2).min((self.poll * FLOW_BACKOFF).min(MAX_GAP));
            }
            flowing = n > 0;
        }
    }

    fn set_polling(&mut self, on: bool) {
        if let Some(flag) = self.polling.as_mut() {
            if let Err(e) = flag.set(0, on as u32, 0) {
                // Nothing is lost either way: without the flag the kernel wakes us more often
                // than needed, or (left set) only our timers and the idle safety net drain.
                tracing::warn!(error = %e, "could not update the ring's polling flag");
                self.polling = None;
            }
        }
    }

    /// Drains the ring; returns how many records it found.
    fn drain(&mut self) -> usize {
        let room = self.capacity.events.saturating_sub(self.stats.in_flight.load(Ordering::Acquire));
        let room_bytes = self.capacity.bytes.saturating_sub(self.stats.in_flight_bytes.load(Ordering::Acquire));
        let mut batch = self.spares.take();
        batch.ends.reserve(self.last_batch.0.min(room));
        batch.bytes.reserve(self.last_batch.1.min(room_bytes));
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            if batch.len() < room && batch.byte_len() + item.len() <= room_bytes {
                batch.push(&item);
            } else {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        let n = batch.len();
        self.last_batch = (n, batch.bytes.len());
        if n == 0 {
            self.spares.give(batch);
            return 0;
        }
        let bytes = batch.byte_len();
        self.stats.queued(n, bytes);
        if self.tx.send(batch).is_err() {
            // The consumer is gone (shutting down): nothing will handle these.
            self.stats.settled(n, bytes);
            self.stats.queue_full.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }
}

#[cfg(test)]
mod tests;
