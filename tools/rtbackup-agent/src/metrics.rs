//! The agent's Prometheus metrics (`--metrics ADDR`): how far the backup
//! is behind the device (records, bytes, seconds), the ring's fill, what
//! was sent, the connection, a resync's progress and the spool. Counters
//! and events are kept by the agent as it works ([`Telemetry`], in its
//! settings); the ring's state is read from the kernel at each scrape.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rtbackup_control::RingStatus;
use std::sync::atomic::AtomicU64;

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
            "Age of the oldest record the server does not hold yet (0 when there is none)",
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
            "Highest seq the server holds durably",
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
    }

    /// Samples the ring's state, as the kernel reports it (what
    /// `rtbackupctl status` shows), into the metrics.
    pub fn sample(&self, ring: &RingStatus) {
        let spooled = self.spool_bytes.get().max(0) as u64;
        self.lag_records.set(ring.lag_records as i64);
        self.lag_bytes.set((ring.used_bytes + spooled) as i64);
        self.lag_seconds.set(ring.lag_ms as f64 / 1e3);
        self.ring_bytes.set(ring.size_bytes as i64);
        self.ring_used_bytes.set(ring.used_bytes as i64);
        self.ring_fill.set(ring.fill_percent() / 100.0);
        self.head_seq.set(ring.last_written_seq as i64);
        self.acked_seq.set(ring.last_acked_seq as i64);
    }
}
