//! What the agent is told to do.

use std::time::Duration;

/// Settings of [`crate::run`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The server, `HOST:PORT`.
    pub server: String,
    /// The volume name on the server.
    pub volume: String,
    /// This host's name, sent in HELLO for the server's logs.
    pub client: String,
    /// Most record bytes in one RECORDS frame (at least one record is sent
    /// even if larger).
    pub batch_bytes: u64,
    /// How long to hold back a batch smaller than `batch_bytes` for more
    /// records to arrive (0: send what is there at once).
    pub max_batch_delay: Duration,
    /// First delay before reconnecting; doubled after each failure.
    pub backoff_initial: Duration,
    /// Longest delay before reconnecting.
    pub backoff_max: Duration,
    /// Time allowed to set up the TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for the server to answer HELLO.
    pub handshake_timeout: Duration,
    /// Longest wait for an ACK while records are outstanding (counted
    /// from the start of the write that sent them) before the connection
    /// is given up as dead.
    pub ack_timeout: Duration,
    /// Longest a write to the server may make no progress (`SO_SNDTIMEO`).
    pub write_timeout: Duration,
    /// Longest data sent may stay unacknowledged by the server host's TCP
    /// (`TCP_USER_TIMEOUT`): a dead host is noticed this long after the
    /// first unanswered segment. While the connection is idle, TCP
    /// keepalive probes (after 10 s, every 5 s, 3 of them) notice it.
    pub tcp_user_timeout: Duration,
    /// Longest a wait for records lasts before the agent checks whether it
    /// should stop.
    pub poll_interval: Duration,
    /// On stop, how long to wait for outstanding acknowledgements.
    pub drain_timeout: Duration,
    /// What the initial sync of a new attach sends.
    pub initial_sync: InitialSync,
    /// Most bytes per second a resync (or initial sync) reads and sends
    /// (`None`: as fast as it goes).
    pub resync_max_rate: Option<u64>,
    /// The rate a resync (or initial sync) slows down to while the
    /// applications write to the device (`None`: it never slows down).
    pub resync_busy_rate: Option<u64>,
    /// The local spool directory (`--spool`): records leave a filling ring
    /// for it while the server cannot be reached.
    pub spool: Option<std::path::PathBuf>,
    /// Most bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// This client's TLS credentials; `None`: plaintext, to a loopback
    /// server only (`--insecure-loopback-only`).
    pub credentials: Option<rtbackup_tls::Credentials>,
    /// Where the agent counts what it does (its `--metrics`).
    pub telemetry: crate::Telemetry,
}

/// The default of [`AgentConfig::resync_busy_rate`] (`--busy-rate`): 4 MiB/s.
pub const DEFAULT_BUSY_RATE: u64 = 4 << 20;

/// What the initial sync of a new attach sends (Documentation/design.rst,
/// "Initial sync").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialSync {
    /// The chunks whose checksums differ from the backup's latest state
    /// (all non-zero chunks when the server has no such volume yet).
    #[default]
    Verify,
    /// Every chunk.
    Full,
    /// Nothing: the operator asserts that the device equals the backup's
    /// latest state.
    None,
}

impl AgentConfig {
    /// The default settings for `server` and `volume`.
    pub fn new(
        server: impl Into<String>,
        volume: impl Into<String>,
        client: impl Into<String>,
    ) -> Self {
        Self {
            server: server.into(),
            volume: volume.into(),
            client: client.into(),
            batch_bytes: 4 << 20,
            max_batch_delay: Duration::ZERO,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(2),
            initial_sync: InitialSync::Verify,
            resync_max_rate: None,
            resync_busy_rate: Some(DEFAULT_BUSY_RATE),
            spool: None,
            spool_max_bytes: 8 << 30,
            credentials: None,
            telemetry: crate::Telemetry::default(),
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; doubles the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the initial delay, after a connection that worked.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ms: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
