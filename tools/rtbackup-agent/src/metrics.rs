//! The agent's Prometheus metrics (`--metrics ADDR`): how far the backup
//! is behind the device (records, bytes, seconds), the ring's fill, what
//! was sent, the connection, a resync's progress and the spool. Counters
//! and events are kept by the agent as it works ([`Telemetry`], in its
//! settings); the ring's state is sampled at each scrape.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rtbackup_ring::RingSource;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

type GaugeF = Gauge<f64, AtomicU64>;

/// The agent's metrics. Clones share their values; unregistered ones cost
/// a few atomic operations.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub(crate) connected: Gauge,
    pub(crate) connections: Counter,
    pub(crate) sent_bytes: Counter,
    pub(crate) resync_bytes: Gauge,
    pub(crate) resync_done_bytes: Gauge,
    pub(crate) spool_bytes: Gauge,
    /// First seq in the spool, 0 when it is empty.
    pub(crate) spool_first_seq: Gauge,
    lag_records: Gauge,
    lag_bytes: Gauge,
    lag_seconds: GaugeF,
    ring_bytes: Gauge,
    ring_used_bytes: Gauge,
    ring_fill: GaugeF,
    head_seq: Gauge,
    acked_seq: Gauge,
}

impl Telemetry {
    /// Adds the metrics to `r` (prefix it: `rtbackup_agent`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "lag_records",
            "Records written to the device that the server does not hold durably yet \
             (in the ring or the spool)",
            self.lag_records.clone(),
        );
        r.register(
            "lag_bytes",
            "Bytes of those records",
            self.lag_bytes.clone(),
        );
        r.register(
            "lag_seconds",
            "Age of the oldest record in the ring that the server does not hold yet \
             (0 when there is none)",
            self.lag_seconds.clone(),
        );
        r.register("ring_bytes", "Size of the ring", self.ring_bytes.clone());
        r.register(
            "ring_used_bytes",
            "Bytes of records in the ring",
            self.ring_used_bytes.clone(),
        );
        r.register(
            "ring_fill_ratio",
            "Fill of the ring, 0 to 1 (at 1 writers wait, or the device tracks)",
            self.ring_fill.clone(),
        );
        r.register(
            "head_seq",
            "Seq of the newest record in the ring",
            self.head_seq.clone(),
        );
        r.register(
            "acked_seq",
            "Highest seq that left the ring (held by the server, or spooled)",
            self.acked_seq.clone(),
        );
        r.register(
            "connected",
            "1 while a session with the server is up",
            self.connected.clone(),
        );
        r.register(
            "connections",
            "Sessions the server accepted (a reconnection adds one)",
            self.connections.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes of records sent to the server (resent ones again)",
            self.sent_bytes.clone(),
        );
        r.register(
            "resync_bytes",
            "Bytes the current resync or initial sync goes through (0: none running)",
            self.resync_bytes.clone(),
        );
        r.register(
            "resync_done_bytes",
            "Bytes of it done",
            self.resync_done_bytes.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of records in the spool",
            self.spool_bytes.clone(),
        );
    }

    /// What the spool holds now.
    pub(crate) fn spooled(&self, spool: &crate::spool::Spool) {
        self.spool_bytes.set(spool.bytes() as i64);
        self.spool_first_seq
            .set(spool.first_seq().unwrap_or(0) as i64);
    }

    /// Samples the ring's state into the metrics.
    pub fn sample<S: RingSource>(&self, ring: &S) {
        let view = ring.view();
        let tail = view.tail_cursor();
        let head = view.head();
        let head_seq = view.head_seq();
        let size = view.data_size();
        let used = head.saturating_sub(tail.pos);
        let spool_first = self.spool_first_seq.get() as u64;
        let durable_next = if spool_first > 0 {
            spool_first.min(tail.seq)
        } else {
            tail.seq
        };
        self.lag_records
            .set(head_seq.saturating_sub(durable_next) as i64);
        self.lag_bytes
            .set((used + self.spool_bytes.get().max(0) as u64) as i64);
        self.ring_bytes.set(size as i64);
        self.ring_used_bytes.set(used as i64);
        self.ring_fill.set(if size == 0 {
            0.0
        } else {
            used as f64 / size as f64
        });
        self.head_seq.set(head_seq.saturating_sub(1) as i64);
        self.acked_seq.set(tail.seq.saturating_sub(1) as i64);
        self.lag_seconds.set(oldest_age(ring).unwrap_or(0.0));
    }
}

/// Seconds since the oldest record in the ring was written; `None` when
/// the ring is empty. The record is read while the consumer (the agent's
/// own thread) may release it: the time counts only if the tail did not
/// move meanwhile, else the record may have been overwritten.
fn oldest_age<S: RingSource>(ring: &S) -> Option<f64> {
    let view = ring.view();
    for _ in 0..3 {
        let tail = view.tail_cursor();
        let time_ns = {
            let batch = view.read_batch(tail, 1).ok()?;
            let first = batch.iter().next()?.ok()?;
            first.header.time_ns
        };
        if view.tail_cursor() == tail {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            return Some(now.saturating_sub(time_ns) as f64 / 1e9);
        }
    }
    None
}
