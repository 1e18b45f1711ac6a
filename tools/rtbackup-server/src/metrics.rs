//! The server's Prometheus metrics (`serve --metrics ADDR`): connections,
//! what each volume received, and each open volume's state (size,
//! journal, durable and applied seqs, the last consistency point, whether
//! a resync is open), read at each scrape from memory and the history
//! index, never under the volume lock or by walking a journal; with TLS, the
//! client certificates that expire within 30 days.

use crate::server::{OpenVolumes, Stats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rtbackup_cli::metrics::MetricsServer;
use rtbackup_cli::CliError;
use rtbackup_store::Store;
use rtbackup_tls::Pki;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabel {
    volume: String,
}

type PerVolume = Family<VolumeLabel, Gauge>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabel {
    client: String,
    fingerprint: String,
}

/// Certificates that expire within this are counted as expiring.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

#[derive(Clone, Default)]
struct Metrics {
    connections: Gauge,
    volumes: Gauge,
    received_records: Family<VolumeLabel, Counter>,
    received_bytes: Family<VolumeLabel, Counter>,
    size: PerVolume,
    journal_bytes: PerVolume,
    segments: PerVolume,
    durable_seq: PerVolume,
    applied_seq: PerVolume,
    resyncing: PerVolume,
    point_seq: PerVolume,
    point_time: Family<VolumeLabel, Gauge<f64, AtomicU64>>,
    cert_expiry: Family<CertificateLabel, Gauge>,
    certs_expiring: Gauge,
    scrape_errors: Counter,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "connections",
            "Connections being served (agents, verify, rollback)",
            self.connections.clone(),
        );
        r.register(
            "volumes",
            "Volumes the server has open (every volume of its store that opened)",
            self.volumes.clone(),
        );
        r.register(
            "received_records",
            "Records appended to the volume's journal since the server started",
            self.received_records.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes of those records (headers and data)",
            self.received_bytes.clone(),
        );
        r.register("volume_size_bytes", "Size of the volume", self.size.clone());
        r.register(
            "journal_bytes",
            "Bytes of journal segments held (the history)",
            self.journal_bytes.clone(),
        );
        r.register(
            "journal_segments",
            "Journal segments held",
            self.segments.clone(),
        );
        r.register(
            "durable_seq",
            "Highest record seq of the volume's current ring that is durable",
            self.durable_seq.clone(),
        );
        r.register(
            "applied_seq",
            "Record seq applied to the volume's image",
            self.applied_seq.clone(),
        );
        r.register(
            "resyncing",
            "1 while a resync is open (the latest restore point stays before it)",
            self.resyncing.clone(),
        );
        r.register(
            "last_point_seq",
            "Seq of the newest restore point (consistency point) in the history index",
            self.point_seq.clone(),
        );
        r.register(
            "last_point_timestamp_seconds",
            "Time of the newest restore point in the history index (the protected host's clock)",
            self.point_time.clone(),
        );
        r.register(
            "client_certificate_expiry_seconds",
            "Seconds until a registered client certificate that expires within 30 days stops being valid (negative: expired)",
            self.cert_expiry.clone(),
        );
        r.register(
            "client_certificates_expiring",
            "Registered client certificates that expire within 30 days or have expired: enroll again",
            self.certs_expiring.clone(),
        );
        r.register(
            "scrape_errors",
            "Volumes whose state could not be read for a scrape (see the log)",
            self.scrape_errors.clone(),
        );
    }

    fn refresh(&self, store: &Store, open: &OpenVolumes, pki: Option<&Pki>, stats: &Stats) {
        self.connections.set(stats.connections() as i64);
        if let Some(pki) = pki {
            match pki.expiring(EXPIRY_WARNING) {
                Ok(certs) => {
                    self.cert_expiry.clear();
                    self.certs_expiring.set(certs.len() as i64);
                    for c in certs {
                        let left = seconds_left(c.not_after);
                        self.cert_expiry
                            .get_or_create(&CertificateLabel {
                                client: c.client,
                                fingerprint: c.fingerprint,
                            })
                            .set(left);
                    }
                }
                Err(e) => {
                    tracing::warn!("metrics: cannot read the client certificates: {e}");
                    self.scrape_errors.inc();
                }
            }
        }
        for (volume, r) in stats.received() {
            let l = VolumeLabel { volume };
            set_counter(&self.received_records.get_or_create(&l), r.records);
            set_counter(&self.received_bytes.get_or_create(&l), r.bytes);
        }
        let volumes = open.statuses();
        self.volumes.set(volumes.len() as i64);
        for (volume, status) in volumes {
            let l = VolumeLabel {
                volume: volume.clone(),
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(volume, "metrics: cannot read the volume's state: {e}");
                    self.scrape_errors.inc();
                    continue;
                }
            };
            self.size.get_or_create(&l).set(status.size_bytes as i64);
            self.journal_bytes
                .get_or_create(&l)
                .set(status.journal_bytes as i64);
            self.segments.get_or_create(&l).set(status.segments as i64);
            self.durable_seq
                .get_or_create(&l)
                .set(status.durable_seq as i64);
            self.applied_seq
                .get_or_create(&l)
                .set(status.applied_seq as i64);
            self.resyncing
                .get_or_create(&l)
                .set(i64::from(status.resyncing));
            // From the index alone: a scrape never takes the volume lock
            // or walks the journal.
            match store.indexed_latest_point(&volume) {
                Ok(Some(p)) => {
                    self.point_seq.get_or_create(&l).set(p.seq as i64);
                    self.point_time
                        .get_or_create(&l)
                        .set(p.time_ns as f64 / 1e9);
                }
                Ok(None) => tracing::debug!(volume, "metrics: no history index yet"),
                Err(e) => {
                    tracing::debug!(volume, "metrics: no restore point: {e}");
                }
            }
        }
    }
}

/// Seconds from now to `t` (negative if past).
pub fn seconds_left(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Counters count up; `total` is the count kept by the server.
fn set_counter(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// Serves the metrics of a server on `store` (with its PKI, if TLS;
/// `stats` from [`crate::Server::stats`]) on `addr`.
pub fn start(
    addr: &str,
    store: Store,
    open: OpenVolumes,
    pki: Option<Pki>,
    stats: Arc<Stats>,
) -> Result<MetricsServer, CliError> {
    let mut registry = Registry::with_prefix("rtbackup_server");
    let m = Metrics::default();
    m.register(&mut registry);
    MetricsServer::start(addr, registry, move || {
        m.refresh(&store, &open, pki.as_ref(), &stats)
    })
}
