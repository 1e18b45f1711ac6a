//! The agent's streaming loop, on an in-memory ring, against the real
//! server (the `rtbackup-server` library on a temporary store), across a
//! server restart; then the restored image must be what was written.

use rtbackup_abi::{RTB_OP_FLUSH, RTB_OP_RESYNC, RTB_OP_WRITE};
use rtbackup_agent::{run, AgentConfig};
use rtbackup_ring::mem::MemRing;
use rtbackup_ring::RingSource;
use rtbackup_server::Server;
use rtbackup_store::Store;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const RING_ID: u64 = 0xabc0_0001;
/// A 4 MiB volume.
const SECTORS: u64 = 8192;

/// A running server on `store`.
struct Running {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<rtbackup_server::Result<()>>,
}

fn start_server(store: &Path, addr: &str) -> (Running, SocketAddr) {
    let server = Server::bind(Store::open(store).unwrap(), addr).unwrap();
    let local = server.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let thread = thread::spawn(move || server.run(&s));
    (Running { stop, thread }, local)
}

impl Running {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap().unwrap();
    }
}

/// Record `seq`'s write: where and what.
fn write_of(seq: u64) -> (u64, Vec<u8>) {
    let blocks = 1 + seq % 8;
    let sector = (seq * 104_729) % (SECTORS - 8 * 8) / 8 * 8;
    let data = (0..blocks * 512)
        .map(|i| (seq.wrapping_mul(31) ^ i) as u8)
        .collect();
    (sector, data)
}

/// Appends records `from..=to` (writes), then a FLUSH, into `ring` and
/// into the expected image.
fn produce(ring: &MemRing, image: &mut [u8], count: u64) {
    for _ in 0..count {
        let seq = ring.next_seq();
        let (sector, data) = write_of(seq);
        let at = (sector * 512) as usize;
        image[at..at + data.len()].copy_from_slice(&data);
        ring.append_wait(
            RTB_OP_WRITE,
            0,
            sector,
            data.len() as u64,
            &data,
            Duration::from_secs(60),
        )
        .unwrap();
    }
    ring.append_wait(RTB_OP_FLUSH, 0, 0, 0, &[], Duration::from_secs(60))
        .unwrap();
}

/// Logs of the code under test, through the test harness.
fn test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

/// An agent configuration for volume `vol` on `addr` with fast retries.
fn fast_config(addr: SocketAddr, vol: &str, batch_bytes: u64) -> AgentConfig {
    let mut cfg = AgentConfig::new(addr.to_string(), vol, "test-host");
    cfg.batch_bytes = batch_bytes;
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(100);
    cfg.poll_interval = Duration::from_millis(10);
    cfg
}

fn wait_until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn streams_to_the_real_server_across_a_restart() {
    test_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (server, addr) = start_server(&store, "127.0.0.1:0");
    let ring = MemRing::new(2 << 20, RING_ID, SECTORS, 512).unwrap();
    let cfg = fast_config(addr, "vol-a", 64 << 10);
    let mut image = vec![0u8; (SECTORS * 512) as usize];
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&ring, &cfg, &stop));
        // Records stream while they are written.
        produce(&ring, &mut image, 600);
        let first = ring.next_seq() - 1;
        wait_until(
            "the first records to be acknowledged",
            Duration::from_secs(60),
            || ring.view().tail_seq() == first + 1,
        );
        // The server goes away; records written meanwhile stay in the ring.
        server.stop();
        produce(&ring, &mut image, 300);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(ring.view().tail_seq(), first + 1);
        assert!(ring.acks().last().is_some_and(|a| !a.connected));
        // It comes back on the same address and store: the agent resumes.
        let (server, _) = start_server(&store, &addr.to_string());
        let last = ring.next_seq() - 1;
        wait_until(
            "the rest to be acknowledged",
            Duration::from_secs(60),
            || ring.view().tail_seq() == last + 1,
        );
        stop.store(true, Ordering::SeqCst);
        agent.join().unwrap().unwrap();
        server.stop();
    });
    let store = Store::open(&store).unwrap();
    let status = store.volume_status("vol-a").unwrap();
    assert_eq!(
        (status.ring_id, status.durable_seq),
        (RING_ID, ring.next_seq() - 1)
    );
    assert_eq!(status.size_bytes, SECTORS * 512);
    let out = dir.path().join("restored.img");
    let report = store.restore("vol-a", &out).unwrap();
    assert_eq!(report.seq, ring.next_seq() - 1);
    let restored = std::fs::read(&out).unwrap();
    assert!(
        restored == image,
        "the restored image differs from what was written"
    );
}

/// Runs the agent on `ring` until its initial sync is done and the server
/// holds every seq, with `during` writing meanwhile.
fn initial_sync(ring: &MemRing, cfg: &AgentConfig, during: impl FnOnce() + Send) {
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(ring, cfg, &stop));
        s.spawn(during).join().unwrap();
        let v = ring.view();
        wait_until("the initial sync", Duration::from_secs(60), || {
            !v.is_unsynced() && !v.is_tracking() && !v.resync_owed() && v.tail() == v.head()
        });
        // A last write and flush, recorded and acknowledged after the sync.
        ring.device_write(0, &[9; 512]).unwrap().unwrap();
        let seq = ring.device_flush().unwrap().unwrap();
        wait_until("the last write", Duration::from_secs(60), || {
            v.tail_seq() == seq + 1
        });
        stop.store(true, Ordering::SeqCst);
        agent.join().unwrap().unwrap();
    });
}

/// RESYNC records of ring `ring_id` in the volume's journal with data.
fn resync_chunks_sent(store: &Store, volume: &str, ring_id: u64) -> usize {
    let mut n = 0;
    store
        .log(volume, None, |r| {
            if r.ring_id == ring_id && r.op == RTB_OP_RESYNC && r.len > 0 {
                n += 1;
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    n
}

#[test]
fn the_initial_sync_sends_what_the_backup_lacks_and_a_reattach_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let (server, addr) = start_server(&store_dir, "127.0.0.1:0");
    let mut cfg = AgentConfig::new(addr.to_string(), "vol-i", "test-host");
    cfg.batch_bytes = 64 << 10;
    cfg.poll_interval = Duration::from_millis(20);
    const CHUNK: u64 = 64 << 10;

    // A device with data on 5 of its 64 chunks before the attach.
    let ring = MemRing::new(1 << 20, RING_ID, SECTORS, 512)
        .unwrap()
        .with_device(CHUNK, true)
        .unsynced();
    for c in [0u64, 3, 17, 40, 63] {
        ring.device_preload(c * CHUNK + 100, &[c as u8 + 1; 3000]);
    }
    initial_sync(&ring, &cfg, || {
        // Writes during the initial sync (tracked, then resynced).
        for i in 0..50u64 {
            ring.device_write((i * 97 % 8000) / 8 * 8, &[i as u8; 4096])
                .unwrap();
        }
    });
    server.stop();
    let store = Store::open(&store_dir).unwrap();
    let out = dir.path().join("restored.img");
    store.restore("vol-i", &out).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == ring.device_image(),
        "the restore after the initial sync differs from the device"
    );
    // Only chunks with data (preloaded or written meanwhile) were sent.
    let sent = resync_chunks_sent(&store, "vol-i", RING_ID);
    assert!((5..64).contains(&sent), "{sent} chunks sent");

    // Re-attach (a new ring) over the same data: the verify finds nothing
    // to send.
    let (server, addr2) = start_server(&store_dir, "127.0.0.1:0");
    cfg.server = addr2.to_string();
    let again = MemRing::new(1 << 20, RING_ID + 1, SECTORS, 512)
        .unwrap()
        .with_device(CHUNK, true)
        .unsynced();
    again.device_preload(0, &ring.device_image());
    initial_sync(&again, &cfg, || {});
    server.stop();
    assert_eq!(resync_chunks_sent(&store, "vol-i", RING_ID + 1), 0);
    store.restore("vol-i", &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == again.device_image());
}

/// Files of records in a spool directory.
fn spool_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".spool")
        })
        .count()
}

/// Every seq of ring `ring_id` in the volume's journal, in journal order.
fn journal_seqs(store: &Store, volume: &str, ring_id: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    store
        .log(volume, None, |r| {
            if r.ring_id == ring_id {
                seqs.push(r.seq);
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    seqs
}

#[test]
fn a_long_outage_goes_to_the_spool_and_arrives_in_order_after_an_agent_restart() {
    test_logs();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let spool = dir.path().join("spool");
    let (server, addr) = start_server(&store, "127.0.0.1:0");
    // 256 KiB of ring for about 4.5 MiB of writes during the outage.
    let ring = MemRing::new(256 << 10, RING_ID, SECTORS, 512).unwrap();
    let mut cfg = fast_config(addr, "vol-s", 32 << 10);
    cfg.spool = Some(spool.clone());
    cfg.spool_max_bytes = 64 << 20;
    let mut image = vec![0u8; (SECTORS * 512) as usize];
    let stop = AtomicBool::new(false);
    let first = thread::scope(|s| {
        let agent = s.spawn(|| run(&ring, &cfg, &stop));
        produce(&ring, &mut image, 50);
        let first = ring.next_seq() - 1;
        wait_until("the first records", Duration::from_secs(60), || {
            ring.view().tail_seq() == first + 1
        });
        assert_eq!(ring.durable_seq(), first);
        server.stop();
        // Far more than the ring holds: the writer never waits more than
        // the agent's poll interval for the spool to take records.
        produce(&ring, &mut image, 2000);
        let last = ring.next_seq() - 1;
        wait_until("records to be spooled", Duration::from_secs(60), || {
            ring.view().tail_seq() > first + 1000
        });
        // The ring gave their room back, but they are not on the server.
        assert_eq!(
            ring.durable_seq(),
            first,
            "spooled records counted as durable"
        );
        assert!(ring.acks().iter().any(|a| a.spooled_durable == Some(first)));
        // The agent is stopped while the server is away.
        stop.store(true, Ordering::SeqCst);
        agent.join().unwrap().unwrap();
        assert!(ring.view().tail_seq() <= last + 1);
        first
    });
    assert!(spool_files(&spool) > 0, "nothing in the spool directory");
    // A new agent on the same spool, and the server back: the spooled
    // records go first, then the rest of the ring.
    let (server, _) = start_server(&store, &addr.to_string());
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&ring, &cfg, &stop));
        produce(&ring, &mut image, 20);
        let last = ring.next_seq() - 1;
        wait_until("everything on the server", Duration::from_secs(60), || {
            ring.durable_seq() == last && ring.view().tail_seq() == last + 1
        });
        stop.store(true, Ordering::SeqCst);
        agent.join().unwrap().unwrap();
        server.stop();
    });
    let store = Store::open(&store).unwrap();
    let last = ring.next_seq() - 1;
    assert_eq!(store.volume_status("vol-s").unwrap().durable_seq, last);
    // Every record once, in order: no resync, no gap.
    assert_eq!(
        journal_seqs(&store, "vol-s", RING_ID),
        (1..=last).collect::<Vec<_>>()
    );
    assert!(first < last);
    let out = dir.path().join("restored.img");
    assert_eq!(store.restore("vol-s", &out).unwrap().seq, last);
    assert!(
        std::fs::read(&out).unwrap() == image,
        "the restored image differs"
    );
    // The spool is empty again.
    assert_eq!(spool_files(&spool), 0);
}
