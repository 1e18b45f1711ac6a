//! What `rtbackupctl status` shows about a device.

use crate::control::OnFull;
use rtbackup_abi::{
    c_str_bytes, RtbDeviceInfo, RtbRingInfo, RtbStats, RTB_AGENT_CONNECTED, RTB_AGENT_OPEN,
    RTB_ON_FULL_TRACK, RTB_RING_F_RESYNC, RTB_RING_F_TRACKING, RTB_RING_F_UNSYNCED,
    RTB_STATE_DETACHING,
};
use serde::Serialize;

/// One attached device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    /// `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// `/dev/rtbackupN`.
    pub device: String,
    /// `major:minor` of the stacked disk.
    pub devt: String,
    /// The lower device, as attached.
    pub lower: String,
    /// `major:minor` of the lower device.
    pub lower_devt: String,
    /// `attached` or `detaching`.
    pub state: &'static str,
    /// Openers of the stacked disk (a mount is one).
    pub open_count: u32,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// Physical block size in bytes.
    pub physical_block_size: u32,
    /// I/O counters since attach.
    pub stats: Stats,
    /// The write-journal ring and replication progress.
    pub ring: RingStatus,
}

/// The write-journal ring of a device, as of one `RTB_IOC_LIST`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RingStatus {
    /// Bytes of the ring's data area.
    pub size_bytes: u64,
    /// Bytes of records still in the ring: not yet acknowledged by the
    /// server nor kept in the agent's spool.
    pub used_bytes: u64,
    /// Sequence number of the last record written (0: none yet).
    pub last_written_seq: u64,
    /// Sequence number of the last record the server has durably.
    pub last_acked_seq: u64,
    /// Records written and not yet acknowledged by the server: the lag.
    pub lag_records: u64,
    /// Records out of the ring but only in the agent's local spool
    /// (`rtbackup-agent --spool`), not yet on the server.
    pub spooled_records: u64,
    /// Submission time (Unix ns) of the oldest record not acknowledged.
    pub oldest_unacked_ns: Option<u64>,
    /// Time (Unix ns) of the last acknowledgement.
    pub last_ack_ns: Option<u64>,
    /// Times a writer waited for room in the ring.
    pub full_waits: u64,
    /// Writers waiting for room now.
    pub waiting_writers: u32,
    /// An agent holds the ring open.
    pub agent_attached: bool,
    /// The agent reported a live connection to the server.
    pub agent_connected: bool,
    /// Random identity of this attach.
    pub ring_id: u64,
    /// Age in milliseconds of the oldest record not acknowledged, when the
    /// status was read (0 when the server has everything).
    pub lag_ms: u64,
    /// `initial-sync` (attached, the backup not yet told what the device
    /// holds: writes set dirty-bitmap bits until the agent's initial sync
    /// completes), `tracking` (the ring overflowed: writes set bits),
    /// `resyncing` (recording again; chunks of a resync are being sent) or
    /// `recording` (every write goes to the ring).
    pub mode: &'static str,
    /// Chunks dirty and not yet fetched by the agent.
    pub dirty_chunks: u64,
    /// Chunks of the resync in progress (fetched, not done).
    pub resync_chunks: u64,
    /// Bytes per bitmap chunk.
    pub chunk_size: u64,
    /// Times the ring overflowed into tracking.
    pub overflows: u64,
    /// What a full ring does: `track` or `block`.
    pub on_full: OnFull,
    /// With `block`, milliseconds a writer waits before the ring tracks
    /// instead; 0: as long as it takes.
    pub block_timeout_ms: u32,
}

impl RingStatus {
    /// Percentage of the ring in use.
    pub fn fill_percent(&self) -> f64 {
        if self.size_bytes == 0 {
            return 0.0;
        }
        self.used_bytes as f64 * 100.0 / self.size_bytes as f64
    }
}

impl From<&RtbRingInfo> for RingStatus {
    fn from(r: &RtbRingInfo) -> Self {
        let nonzero = |v: u64| (v != 0).then_some(v);
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            lag_ms: nonzero(r.oldest_unacked_ns)
                .map_or(0, |t| now_ns.saturating_sub(t) / 1_000_000),
            size_bytes: r.size,
            used_bytes: r.used,
            last_written_seq: r.head_seq.saturating_sub(1),
            last_acked_seq: r.durable_seq,
            lag_records: r.head_seq.saturating_sub(1).saturating_sub(r.durable_seq),
            spooled_records: r.tail_seq.saturating_sub(1).saturating_sub(r.durable_seq),
            oldest_unacked_ns: nonzero(r.oldest_unacked_ns),
            last_ack_ns: nonzero(r.last_ack_ns),
            full_waits: r.full_waits,
            waiting_writers: r.waiting_writers,
            agent_attached: r.agent & RTB_AGENT_OPEN != 0,
            agent_connected: r.agent & RTB_AGENT_CONNECTED != 0,
            ring_id: r.ring_id,
            mode: if r.flags & u64::from(RTB_RING_F_UNSYNCED) != 0 {
                "initial-sync"
            } else if r.flags & u64::from(RTB_RING_F_TRACKING) != 0 {
                "tracking"
            } else if r.flags & u64::from(RTB_RING_F_RESYNC) != 0 {
                "resyncing"
            } else {
                "recording"
            },
            dirty_chunks: r.dirty_chunks,
            resync_chunks: r.resync_chunks,
            chunk_size: r.chunk_size,
            overflows: r.overflows,
            on_full: if r.on_full == RTB_ON_FULL_TRACK {
                OnFull::Track
            } else {
                OnFull::Block
            },
            block_timeout_ms: r.block_timeout_ms,
        }
    }
}

/// I/O counters since attach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Read bios.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Write bios.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Discard bios.
    pub discards: u64,
    /// Bytes discarded.
    pub discard_bytes: u64,
    /// Write-zeroes bios.
    pub write_zeroes: u64,
    /// Bytes zeroed.
    pub write_zeroes_bytes: u64,
    /// Flushes (empty or with a write).
    pub flushes: u64,
    /// FUA writes.
    pub fua_writes: u64,
    /// Bios failed by the lower device.
    pub errors: u64,
    /// Bios at the lower device now.
    pub in_flight: u64,
}

fn string(buf: &[u8]) -> String {
    String::from_utf8_lossy(c_str_bytes(buf).unwrap_or(buf)).into_owned()
}

impl From<&RtbStats> for Stats {
    fn from(s: &RtbStats) -> Self {
        Self {
            reads: s.reads,
            read_bytes: s.read_bytes,
            writes: s.writes,
            write_bytes: s.write_bytes,
            discards: s.discards,
            discard_bytes: s.discard_bytes,
            write_zeroes: s.write_zeroes,
            write_zeroes_bytes: s.write_zeroes_bytes,
            flushes: s.flushes,
            fua_writes: s.fua_writes,
            errors: s.errors,
            in_flight: s.in_flight,
        }
    }
}

impl From<&RtbDeviceInfo> for DeviceStatus {
    fn from(i: &RtbDeviceInfo) -> Self {
        Self {
            index: i.index,
            device: format!("/dev/{}", string(&i.disk_name)),
            devt: format!("{}:{}", i.disk_major, i.disk_minor),
            lower: string(&i.lower_path),
            lower_devt: format!("{}:{}", i.lower_major, i.lower_minor),
            state: if i.state & RTB_STATE_DETACHING != 0 {
                "detaching"
            } else {
                "attached"
            },
            open_count: i.open_count,
            size_bytes: i.capacity_sectors.saturating_mul(512),
            logical_block_size: i.logical_block_size,
            physical_block_size: i.physical_block_size,
            stats: Stats::from(&i.stats),
            ring: RingStatus::from(&i.ring),
        }
    }
}

impl DeviceStatus {
    /// The disk name, `rtbackupN`.
    pub fn disk_name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_abi::RTB_STATE_ATTACHED;

    #[test]
    fn status_from_kernel_info() {
        let mut i = RtbDeviceInfo::ZERO;
        i.index = 3;
        i.state = RTB_STATE_ATTACHED;
        i.disk_major = 259;
        i.disk_minor = 7;
        i.lower_major = 8;
        i.lower_minor = 16;
        i.capacity_sectors = 2048;
        i.disk_name[..9].copy_from_slice(b"rtbackup3");
        i.lower_path[..8].copy_from_slice(b"/dev/sdb");
        i.stats.writes = 5;
        let s = DeviceStatus::from(&i);
        assert_eq!(s.device, "/dev/rtbackup3");
        assert_eq!(s.disk_name(), "rtbackup3");
        assert_eq!(s.devt, "259:7");
        assert_eq!(s.lower, "/dev/sdb");
        assert_eq!(s.lower_devt, "8:16");
        assert_eq!(s.state, "attached");
        assert_eq!(s.size_bytes, 1024 * 1024);
        assert_eq!(s.stats.writes, 5);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["stats"]["writes"], 5);
        assert_eq!(json["lower"], "/dev/sdb");
    }

    #[test]
    fn unterminated_kernel_string_is_read_whole() {
        let mut i = RtbDeviceInfo::ZERO;
        i.disk_name = [b'x'; 32];
        assert_eq!(DeviceStatus::from(&i).device.len(), 5 + 32);
    }
}
