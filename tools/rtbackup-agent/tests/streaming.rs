//! The agent's streaming loop against an in-memory ring (a producer that
//! lays records out as the kernel does) and a minimal server, in this
//! test, that speaks the protocol with rtbackup-proto: records must arrive
//! in order exactly once across disconnects, and the ring's consumer
//! position must move only past records the server acknowledged.

use rtbackup_abi::{RTB_OP_RESYNC, RTB_OP_RESYNC_END, RTB_OP_WRITE};
use rtbackup_agent::{run, AgentConfig, AgentError, Exit};
use rtbackup_proto::{read_frame, records, write_frame, ErrorMsg, Frame, Hello, Welcome};
use rtbackup_ring::mem::{MemBuf, MemRing, PollMode};
use rtbackup_ring::{RingSource, RingView, Wakeup};
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const RING_ID: u64 = 0x5eed_0001;
const CAPACITY_SECTORS: u64 = 1 << 24;

/// Payload length of record `seq`: varied, up to a few KiB.
fn len_of(seq: u64) -> usize {
    ((seq * 7919) % 3000) as usize
}

fn payload(seq: u64) -> Vec<u8> {
    (0..len_of(seq)).map(|i| (seq as usize ^ i) as u8).collect()
}

/// What the server does on its `n`th connection (from 0).
#[derive(Clone, Debug, Default)]
struct ConnPolicy {
    /// Answer HELLO with this ERROR.
    refuse: Option<&'static str>,
    /// Claim this durable seq in WELCOME instead of the truth.
    welcome_durable: Option<u64>,
    /// After this many records on the connection, close it without storing
    /// or acknowledging the frame (a crash before the fsync).
    drop_after: Option<u64>,
    /// After this many records, store them but close without ACK (a crash
    /// after the fsync, before the ACK went out).
    store_then_drop_after: Option<u64>,
    /// Send this ACK right after WELCOME (a broken server).
    bogus_ack: Option<u64>,
    /// Never acknowledge.
    never_ack: bool,
    /// After WELCOME, never read again (a server that hangs): the agent's
    /// writes block once the socket buffers are full.
    never_read: bool,
}

#[derive(Default)]
struct Shared {
    /// Stored records, index seq - 1.
    durable: Mutex<Vec<Vec<u8>>>,
    /// Highest seq acknowledged on any connection, set before the ACK is
    /// sent.
    max_acked: AtomicU64,
    connections: AtomicUsize,
    hellos: Mutex<Vec<Hello>>,
    /// Records received that the server already held.
    duplicates: AtomicU64,
    /// What the server found wrong (gaps, bad records).
    problems: Mutex<Vec<String>>,
    stop: AtomicBool,
}

type Policy = Arc<dyn Fn(usize) -> ConnPolicy + Send + Sync>;

struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(policy: impl Fn(usize) -> ConnPolicy + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let policy: Policy = Arc::new(policy);
        let s = Arc::clone(&shared);
        let thread = thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let n = s.connections.fetch_add(1, Ordering::SeqCst);
                        let p = policy(n);
                        let s = Arc::clone(&s);
                        thread::spawn(move || serve(stream, &s, &p));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    fn durable_count(&self) -> u64 {
        self.shared.durable.lock().unwrap().len() as u64
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn problem(s: &Shared, what: String) {
    s.problems.lock().unwrap().push(what);
}

/// Serves one connection as the protocol says (with `p`'s deviations).
fn serve(stream: TcpStream, s: &Shared, p: &ConnPolicy) {
    let mut r = BufReader::new(&stream);
    let mut w = &stream;
    let hello = match read_frame(&mut r) {
        Ok(Frame::Hello(h)) => h,
        other => return problem(s, format!("expected HELLO, got {other:?}")),
    };
    s.hellos.lock().unwrap().push(hello.clone());
    if let Some(code) = p.refuse {
        let _ = write_frame(
            &mut w,
            &Frame::Error(ErrorMsg::new(code, "refused by the test")),
        );
        return;
    }
    let mut durable = s.durable.lock().unwrap().len() as u64;
    let welcome = Welcome {
        protocol: 1,
        volume: hello.volume.clone(),
        ring_id: hello.ring_id,
        durable_seq: p.welcome_durable.unwrap_or(durable),
        server_version: "test".into(),
    };
    if write_frame(&mut w, &Frame::Welcome(welcome)).is_err() {
        return;
    }
    if let Some(seq) = p.bogus_ack {
        let _ = write_frame(&mut w, &Frame::Ack(seq));
    }
    if p.never_read {
        while !s.stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(10));
        }
        return;
    }
    let mut received = 0u64;
    loop {
        let payload = match read_frame(&mut r) {
            Ok(Frame::Records(b)) => b,
            Ok(other) => return problem(s, format!("unexpected frame {other:?}")),
            Err(_) => return, // the agent closed the connection
        };
        let mut pending = Vec::new();
        for rec in records(&payload) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => return problem(s, format!("bad record: {e}")),
            };
            let seq = rec.seq();
            received += 1;
            if seq <= durable {
                s.duplicates.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if seq != durable + pending.len() as u64 + 1 {
                return problem(
                    s,
                    format!("gap: seq {seq} after {}", durable + pending.len() as u64),
                );
            }
            pending.push(rec.bytes.to_vec());
        }
        if p.drop_after.is_some_and(|n| received >= n) {
            return;
        }
        {
            let mut d = s.durable.lock().unwrap();
            assert_eq!(d.len() as u64, durable, "one connection at a time");
            d.extend(pending);
            durable = d.len() as u64;
        }
        if p.store_then_drop_after.is_some_and(|n| received >= n) || p.never_ack {
            if p.never_ack {
                continue;
            }
            return;
        }
        s.max_acked.fetch_max(durable, Ordering::SeqCst);
        if write_frame(&mut w, &Frame::Ack(durable)).is_err() {
            return;
        }
    }
}

/// A ring source that checks every move of the consumer position against
/// what the server has acknowledged.
struct Checked<'a> {
    ring: &'a MemRing,
    server: &'a Shared,
    violations: Mutex<Vec<String>>,
}

impl RingSource for Checked<'_> {
    type Memory = Arc<MemBuf>;

    fn view(&self) -> &RingView<Arc<MemBuf>> {
        self.ring.view()
    }

    unsafe fn set_tail(&self, position: u64, connected: bool) -> rtbackup_ring::Result<()> {
        let v = self.ring.view();
        let cur = v.cursor_at(v.tail_cursor(), position)?;
        let acked = self.server.max_acked.load(Ordering::SeqCst);
        let durable = self.server.durable.lock().unwrap().len() as u64;
        // Records may leave the ring once acknowledged, or once the
        // server said in WELCOME that it holds them durably.
        if cur.seq - 1 > acked.max(durable) {
            self.violations.lock().unwrap().push(format!(
                "tail moved to seq {} but the server acknowledged only {acked} (holds {durable})",
                cur.seq - 1
            ));
        }
        // SAFETY: forwarded from our caller.
        unsafe { self.ring.set_tail(position, connected) }
    }

    fn wait(&self, timeout: Duration) -> rtbackup_ring::Result<Wakeup> {
        self.ring.wait(timeout)
    }

    fn resync(&self, op: rtbackup_ring::ResyncOp) -> rtbackup_ring::Result<rtbackup_ring::Resync> {
        self.ring.resync(op)
    }

    fn read_device(&self, offset: u64, buf: &mut [u8]) -> rtbackup_ring::Result<()> {
        self.ring.read_device(offset, buf)
    }
}

fn config(server: SocketAddr) -> AgentConfig {
    let mut cfg = AgentConfig::new(server.to_string(), "vol-1", "test-host");
    cfg.batch_bytes = 16 << 10;
    cfg.backoff_initial = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    cfg.poll_interval = Duration::from_millis(20);
    cfg.handshake_timeout = Duration::from_secs(5);
    cfg
}

fn ring(size: u64) -> MemRing {
    MemRing::new(size, RING_ID, CAPACITY_SECTORS, 4096).unwrap()
}

fn produce(ring: &MemRing, n: u64) {
    for _ in 0..n {
        let seq = ring.next_seq();
        let p = payload(seq);
        ring.append_wait(
            RTB_OP_WRITE,
            0,
            seq * 8,
            p.len() as u64,
            &p,
            Duration::from_secs(60),
        )
        .unwrap();
    }
}

/// Sets the agent's stop flag when dropped, so that a failing assertion
/// ends the agent's thread instead of hanging the test.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Checks that the server holds records 1..=n, each once, with the bytes
/// the producer wrote.
fn assert_stored(server: &TestServer, n: u64) {
    let d = server.shared.durable.lock().unwrap();
    assert_eq!(d.len() as u64, n);
    for (i, bytes) in d.iter().enumerate() {
        let rec = rtbackup_proto::parse_record(bytes).unwrap();
        assert_eq!(rec.seq(), i as u64 + 1);
        assert_eq!(
            rec.payload,
            &payload(rec.seq())[..],
            "payload of seq {}",
            rec.seq()
        );
    }
    assert!(
        server.shared.problems.lock().unwrap().is_empty(),
        "{:?}",
        server.shared.problems
    );
}

/// Streams `n` records, produced concurrently into `ring`, to `server`,
/// and stops the agent once all are acknowledged. Checks that the ring's
/// consumer position never passed what the server acknowledged.
fn stream(server: &TestServer, ring: &MemRing, cfg: &AgentConfig, n: u64) {
    let stop = AtomicBool::new(false);
    let checked = Checked {
        ring,
        server: &server.shared,
        violations: Mutex::new(Vec::new()),
    };
    thread::scope(|s| {
        let agent = s.spawn(|| run(&checked, cfg, &stop));
        let _stop = StopOnDrop(&stop);
        s.spawn(|| produce(ring, n));
        wait_until(
            "all records to be acknowledged",
            Duration::from_secs(60),
            || ring.view().tail_seq() == n + 1,
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(agent.join().unwrap().unwrap(), Exit::Stopped);
    });
    let violations = checked.violations.into_inner().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
}

#[test]
fn records_arrive_in_order_exactly_once_across_disconnects() {
    let server = TestServer::start(|n| match n {
        0 => ConnPolicy {
            drop_after: Some(300),
            ..Default::default()
        },
        1 => ConnPolicy {
            drop_after: Some(500),
            ..Default::default()
        },
        2 => ConnPolicy {
            store_then_drop_after: Some(200),
            ..Default::default()
        },
        _ => ConnPolicy::default(),
    });
    let r = ring(64 << 10);
    let n = 3000;
    stream(&server, &r, &config(server.addr), n);
    assert_stored(&server, n);
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 4);
    // The disconnects were reported to the ring, and the reconnections.
    let acks = r.acks();
    assert!(acks.iter().any(|a| !a.connected));
    assert!(
        acks.last().is_some_and(|a| !a.connected),
        "stopping reports a disconnection"
    );
    // The consumer position only ever moved forward.
    assert!(acks.windows(2).all(|w| w[0].tail_seq <= w[1].tail_seq));
    // After the third connection stored records without acknowledging
    // them, the fourth's WELCOME made the agent drop them from the ring
    // instead of sending them again.
    assert_eq!(server.shared.duplicates.load(Ordering::SeqCst), 0);
    let hellos = server.shared.hellos.lock().unwrap();
    let h = &hellos[0];
    assert_eq!(
        (
            h.volume.as_str(),
            h.size_bytes,
            h.block_size,
            h.ring_id,
            h.client.as_str()
        ),
        ("vol-1", CAPACITY_SECTORS * 512, 4096, RING_ID, "test-host")
    );
}

#[test]
fn streaming_works_with_a_level_triggered_poll_and_batch_delay() {
    let server = TestServer::start(|_| ConnPolicy::default());
    let r = ring(32 << 10).with_poll_mode(PollMode::Level);
    let mut cfg = config(server.addr);
    cfg.max_batch_delay = Duration::from_millis(2);
    stream(&server, &r, &cfg, 1000);
    assert_stored(&server, 1000);
    assert_eq!(server.shared.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn records_the_server_already_holds_leave_the_ring_at_once() {
    let r = ring(64 << 10);
    produce(&r, 20);
    let server = TestServer::start(|_| ConnPolicy::default());
    // The server already holds the first 12 (e.g. stored before a crash
    // that lost the ACK).
    {
        let view = r.view();
        let b = view.read_batch(view.tail_cursor(), 1 << 20).unwrap();
        let stored: Vec<Vec<u8>> = b
            .iter()
            .take(12)
            .map(|x| x.unwrap().bytes.to_vec())
            .collect();
        *server.shared.durable.lock().unwrap() = stored;
    }
    let checked = Checked {
        ring: &r,
        server: &server.shared,
        violations: Mutex::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&checked, &config(server.addr), &stop));
        wait_until(
            "the rest to be acknowledged",
            Duration::from_secs(20),
            || r.view().tail_seq() == 21,
        );
        stop.store(true, Ordering::Relaxed);
        agent.join().unwrap().unwrap();
    });
    assert_stored(&server, 20);
    assert_eq!(server.shared.duplicates.load(Ordering::SeqCst), 0);
    // The first acknowledgement was the skip, with the connection up.
    let first = r.acks()[0];
    assert_eq!((first.tail_seq, first.connected), (13, true));
    assert!(checked.violations.lock().unwrap().is_empty());
}

#[test]
fn the_consumer_position_stays_until_the_server_acknowledges() {
    let server = TestServer::start(|_| ConnPolicy {
        never_ack: true,
        ..Default::default()
    });
    let r = ring(256 << 10);
    produce(&r, 50);
    let mut cfg = config(server.addr);
    cfg.ack_timeout = Duration::from_millis(300);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&r, &cfg, &stop));
        // The server stores everything but never acknowledges: the agent
        // gives the connection up after the ACK timeout and reconnects.
        wait_until(
            "a reconnection after the ACK timeout",
            Duration::from_secs(10),
            || server.shared.connections.load(Ordering::SeqCst) >= 2,
        );
        stop.store(true, Ordering::Relaxed);
        agent.join().unwrap().unwrap();
    });
    assert_eq!(server.durable_count(), 50);
    // Only WELCOME (durable_seq 50 on the second connection) may have
    // moved the position; no ACK ever did.
    for a in r.acks() {
        assert!(a.tail_seq == 1 || a.tail_seq == 51, "{a:?}");
    }
}

#[test]
fn an_ack_of_records_never_sent_is_a_protocol_violation() {
    let server = TestServer::start(|n| ConnPolicy {
        bogus_ack: (n == 0).then_some(1000),
        ..Default::default()
    });
    let r = ring(64 << 10);
    produce(&r, 10);
    let checked = Checked {
        ring: &r,
        server: &server.shared,
        violations: Mutex::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&checked, &config(server.addr), &stop));
        wait_until(
            "all records to be acknowledged",
            Duration::from_secs(20),
            || r.view().tail_seq() == 11,
        );
        stop.store(true, Ordering::Relaxed);
        agent.join().unwrap().unwrap();
    });
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 2);
    assert_stored(&server, 10);
    assert!(checked.violations.lock().unwrap().is_empty());
}

#[test]
fn fatal_server_errors_end_the_agent() {
    // Errors the server would answer again and again: no retry.
    for code in [
        "size-mismatch",
        "bad-volume",
        "protocol",
        "stale-ring",
        "unsupported-version",
    ] {
        let server = TestServer::start(move |_| ConnPolicy {
            refuse: Some(code),
            ..Default::default()
        });
        let r = ring(64 << 10);
        produce(&r, 3);
        let stop = AtomicBool::new(false);
        let e = run(&r, &config(server.addr), &stop).unwrap_err();
        assert!(e.is_fatal(), "{code}: {e}");
        assert!(e.to_string().contains(code), "{e}");
        assert_eq!(
            server.shared.connections.load(Ordering::SeqCst),
            1,
            "{code}"
        );
        assert_eq!(r.view().tail_seq(), 1);
        assert!(r.acks().last().is_some_and(|a| !a.connected));
    }
}

#[test]
fn retryable_server_errors_reconnect() {
    let server = TestServer::start(|n| ConnPolicy {
        refuse: match n {
            0 => Some("volume-busy"),
            1 => Some("too-many-connections"),
            2 => Some("store-full"),
            3 => Some("over-quota"),
            _ => None,
        },
        ..Default::default()
    });
    let r = ring(64 << 10);
    stream(&server, &r, &config(server.addr), 100);
    assert_stored(&server, 100);
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 5);
}

#[test]
fn a_server_ahead_of_the_ring_is_fatal() {
    let server = TestServer::start(|_| ConnPolicy {
        welcome_durable: Some(100),
        ..Default::default()
    });
    let r = ring(64 << 10);
    produce(&r, 5);
    let stop = AtomicBool::new(false);
    let e = run(&r, &config(server.addr), &stop).unwrap_err();
    assert!(matches!(e, AgentError::Inconsistent(_)), "{e}");
    assert!(e.to_string().contains("up to seq 100"), "{e}");
    assert_eq!(r.view().tail_seq(), 1);
}

#[test]
fn a_server_that_lost_acknowledged_records_is_fatal() {
    let server = TestServer::start(|_| ConnPolicy::default());
    let r = ring(64 << 10);
    produce(&r, 5);
    // SAFETY: no batch of the ring is in use.
    unsafe { r.ack(3, true) }.unwrap();
    let stop = AtomicBool::new(false);
    let e = run(&r, &config(server.addr), &stop).unwrap_err();
    assert!(matches!(e, AgentError::Inconsistent(_)), "{e}");
    assert!(e.to_string().contains("full resynchronisation"), "{e}");
}

#[test]
fn stopping_while_the_server_is_unreachable_is_prompt() {
    // A port with nobody listening.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = ring(64 << 10);
    produce(&r, 3);
    let mut cfg = config(addr);
    cfg.backoff_max = Duration::from_secs(5);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    thread::scope(|s| {
        let agent = s.spawn(|| run(&r, &cfg, &stop));
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        agent.join().unwrap().unwrap();
    });
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.view().tail_seq(), 1);
    assert!(r.acks().iter().all(|a| !a.connected));
}

/// Runs the agent on `ring` until it returns by itself (a detach, a fatal
/// error), checking that the ring's position never passed the server's
/// ACKs; `during` runs meanwhile.
fn run_until_done(
    server: &TestServer,
    ring: &MemRing,
    cfg: &AgentConfig,
    during: impl FnOnce() + Send,
) -> Result<Exit, AgentError> {
    let checked = Checked {
        ring,
        server: &server.shared,
        violations: Mutex::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    let result = thread::scope(|s| {
        let agent = s.spawn(|| run(&checked, cfg, &stop));
        during();
        // A hang is a failure, not a stuck test.
        let end = Instant::now() + Duration::from_secs(60);
        while !agent.is_finished() {
            if Instant::now() > end {
                stop.store(true, Ordering::Relaxed);
                let _ = agent.join();
                panic!("the agent did not return by itself");
            }
            thread::sleep(Duration::from_millis(5));
        }
        agent.join().unwrap()
    });
    let violations = checked.violations.into_inner().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    result
}

#[test]
fn records_left_at_a_detach_are_delivered_before_the_agent_exits() {
    let server = TestServer::start(|_| ConnPolicy::default());
    let r = ring(1 << 20);
    produce(&r, 200);
    // Detached before the agent sent anything: all 200 records are still
    // to be sent.
    r.detach();
    let exit = run_until_done(&server, &r, &config(server.addr), || {}).unwrap();
    assert_eq!(exit, Exit::Detached { records: 200 });
    assert_stored(&server, 200);
    // Acknowledged in the ring too, and the disconnection reported last.
    assert_eq!(r.view().tail(), r.view().head());
    assert_eq!(r.view().tail_seq(), 201);
    assert!(r.acks().last().is_some_and(|a| !a.connected));
    assert_eq!(server.shared.connections.load(Ordering::SeqCst), 1);
}

/// A producer that writes until the device is detached under it.
fn produce_until_detached(ring: &MemRing, detach_after: u64) {
    for i in 0.. {
        if i == detach_after {
            ring.detach();
        }
        let seq = ring.next_seq();
        let p = payload(seq);
        let r = ring.append_wait(
            RTB_OP_WRITE,
            0,
            seq * 8,
            p.len() as u64,
            &p,
            Duration::from_secs(60),
        );
        if let Err(e) = r {
            assert!(matches!(e, rtbackup_ring::RingError::Detached), "{e}");
            return;
        }
    }
}

#[test]
fn a_detach_while_streaming_ends_the_agent_once_everything_is_acknowledged() {
    for mode in [PollMode::Level, PollMode::Edge] {
        let server = TestServer::start(|_| ConnPolicy::default());
        // Small enough that the producer waits for room.
        let r = ring(32 << 10).with_poll_mode(mode);
        let exit = run_until_done(&server, &r, &config(server.addr), || {
            produce_until_detached(&r, 700)
        })
        .unwrap();
        assert_eq!(exit, Exit::Detached { records: 700 }, "{mode:?}");
        assert_stored(&server, 700);
        assert_eq!(r.view().tail_seq(), 701);
    }
}

#[test]
fn a_failure_while_delivering_the_records_left_at_a_detach_reconnects() {
    // The first connection stores the records but never acknowledges
    // them: the agent gives it up after the ACK timeout while delivering
    // what was left at the detach, and reconnects.
    let server = TestServer::start(|n| match n {
        0 => ConnPolicy {
            never_ack: true,
            ..Default::default()
        },
        _ => ConnPolicy::default(),
    });
    let r = ring(256 << 10);
    let mut cfg = config(server.addr);
    cfg.ack_timeout = Duration::from_millis(300);
    let exit = run_until_done(&server, &r, &cfg, || {
        produce(&r, 100);
        // Everything was sent on the first connection (and stored), but
        // nothing acknowledged.
        wait_until(
            "the first connection to hold everything",
            Duration::from_secs(10),
            || server.durable_count() == 100,
        );
        r.detach();
    })
    .unwrap();
    assert_eq!(exit, Exit::Detached { records: 100 });
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 2);
    assert_stored(&server, 100);
    assert_eq!(r.view().tail_seq(), 101);
    // No ACK came on the first connection: the records left the ring on
    // the second one's WELCOME.
    assert!(r.acks().iter().any(|a| a.tail_seq == 101 && a.connected));
}

#[test]
fn a_ring_detached_with_everything_delivered_needs_no_connection() {
    // A port with nobody listening.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = ring(64 << 10);
    produce(&r, 3);
    // SAFETY: no batch of the ring is in use.
    unsafe { r.ack(3, true) }.unwrap();
    r.detach();
    let exit = run(&r, &config(addr), &AtomicBool::new(false)).unwrap();
    assert_eq!(exit, Exit::Detached { records: 3 });
}

/// Records of 1 MiB each, `n` of them.
fn produce_big(ring: &MemRing, n: u64) {
    let p = vec![0x5a; 1 << 20];
    for _ in 0..n {
        let seq = ring.next_seq();
        ring.append_wait(
            RTB_OP_WRITE,
            0,
            seq * 2048,
            p.len() as u64,
            &p,
            Duration::from_secs(60),
        )
        .unwrap();
    }
}

#[test]
fn a_write_blocked_by_a_server_that_stopped_reading_counts_toward_the_ack_timeout() {
    // The first connection never reads after WELCOME: the agent's write
    // blocks once the socket buffers are full. Only the ACK timeout
    // (which must count from the start of the write) can end it here.
    let server = TestServer::start(|n| ConnPolicy {
        never_read: n == 0,
        ..Default::default()
    });
    let r = ring(64 << 20);
    produce_big(&r, 48);
    let mut cfg = config(server.addr);
    cfg.batch_bytes = 8 << 20;
    // Long enough that the next connection, which reads, is not ended too
    // on a loaded machine (make check runs this beside an emulated VM):
    // that would leave two connections appending at once to the test
    // server, which unlike the real one does not end the older.
    cfg.ack_timeout = Duration::from_secs(3);
    // Neither of the socket's own timeouts may end it first (the TCP user
    // timeout also covers a zero window).
    cfg.write_timeout = Duration::from_secs(3600);
    cfg.tcp_user_timeout = Duration::from_secs(3600);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&r, &cfg, &stop));
        let _stop = StopOnDrop(&stop);
        wait_until(
            "everything to be acknowledged after a reconnection",
            Duration::from_secs(90),
            || r.view().tail_seq() == 49,
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(agent.join().unwrap().unwrap(), Exit::Stopped);
    });
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 2);
    assert_eq!(server.durable_count(), 48);
}

#[test]
fn a_write_that_makes_no_progress_times_out() {
    let server = TestServer::start(|n| ConnPolicy {
        never_read: n == 0,
        ..Default::default()
    });
    let r = ring(64 << 20);
    produce_big(&r, 48);
    let mut cfg = config(server.addr);
    cfg.batch_bytes = 8 << 20;
    cfg.ack_timeout = Duration::from_secs(3600);
    cfg.tcp_user_timeout = Duration::from_secs(3600);
    cfg.write_timeout = Duration::from_millis(300);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&r, &cfg, &stop));
        let _stop = StopOnDrop(&stop);
        wait_until(
            "everything to be acknowledged after a reconnection",
            Duration::from_secs(20),
            || r.view().tail_seq() == 49,
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(agent.join().unwrap().unwrap(), Exit::Stopped);
    });
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 2);
    assert_eq!(server.durable_count(), 48);
}

#[test]
fn a_bad_volume_name_is_refused_before_connecting() {
    let r = ring(64 << 10);
    let mut cfg = config("127.0.0.1:9".parse().unwrap());
    cfg.volume = ".hidden".into();
    let e = run(&r, &cfg, &AtomicBool::new(false)).unwrap_err();
    assert!(e.is_fatal());
    assert!(e.to_string().contains("starts with a dot"), "{e}");
}

// ---------------------------------------------------------------------------
// Overflow and resync (Documentation/design.rst, "Overflow and resync"),
// against the in-memory ring's simulated device.
// ---------------------------------------------------------------------------

/// Sectors of the simulated device of the resync tests (4 MiB).
const DEV_SECTORS: u64 = 8192;
const CHUNK: u64 = 64 << 10;

fn tracking_ring(size: u64) -> MemRing {
    MemRing::new(size, RING_ID, DEV_SECTORS, 512)
        .unwrap()
        .with_device(CHUNK, true)
}

/// Random writes (4 to 32 KiB at 4 KiB-aligned offsets) and flushes to the
/// simulated device.
fn device_load(ring: &MemRing, seed: u64, writes: u64) {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..writes {
        if next() % 8 == 0 {
            ring.device_flush().unwrap();
            continue;
        }
        let len = (1 + next() % 8) * 4096;
        let sector = (next() % ((DEV_SECTORS * 512 - len) / 4096)) * 8;
        let b = (i as u8) ^ (seed as u8);
        let data: Vec<u8> = (0..len).map(|j| b.wrapping_add((j / 512) as u8)).collect();
        ring.device_write(sector, &data).unwrap();
    }
}

/// Replays the server's records onto zeroes, in seq order, as the backup
/// server's image does; returns the image and the end records'
/// `consistent_seq`s.
fn replay(server: &TestServer) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut img = vec![0u8; (DEV_SECTORS * 512) as usize];
    let mut ends = Vec::new();
    for bytes in server.shared.durable.lock().unwrap().iter() {
        let rec = rtbackup_proto::parse_record(bytes).unwrap();
        let h = rec.header;
        match h.op {
            RTB_OP_WRITE | RTB_OP_RESYNC => {
                let at = (h.sector * 512) as usize;
                img[at..at + rec.payload.len()].copy_from_slice(rec.payload);
            }
            RTB_OP_RESYNC_END => {
                let c = u64::from_le_bytes(rec.payload.try_into().unwrap());
                ends.push((h.seq, c));
            }
            _ => {}
        }
    }
    (img, ends)
}

/// Runs the agent until the ring streams again, the resync set is cleared
/// and the server has every seq; `during` runs concurrently.
fn resync_until_done(server: &TestServer, ring: &MemRing, during: impl FnOnce() + Send) {
    let stop = AtomicBool::new(false);
    let checked = Checked {
        ring,
        server: &server.shared,
        violations: Mutex::new(Vec::new()),
    };
    let cfg = config(server.addr);
    thread::scope(|s| {
        let agent = s.spawn(|| run(&checked, &cfg, &stop));
        let _stop = StopOnDrop(&stop);
        s.spawn(during).join().unwrap();
        wait_until("the resync to complete", Duration::from_secs(60), || {
            let v = ring.view();
            !v.is_tracking() && !v.resync_owed() && server.durable_count() == v.head_seq() - 1
        });
        stop.store(true, Ordering::Relaxed);
        assert_eq!(agent.join().unwrap().unwrap(), Exit::Stopped);
    });
    let violations = checked.violations.into_inner().unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let problems = server.shared.problems.lock().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn an_overflowed_ring_is_resynced_to_the_device_image() {
    let server = TestServer::start(|_| ConnPolicy::default());
    let r = tracking_ring(64 << 10);
    // No agent yet: the 64 KiB ring overflows into the bitmap at once.
    device_load(&r, 1, 400);
    assert!(r.view().is_tracking(), "the ring did not overflow");
    // Writes go on while the agent resyncs.
    resync_until_done(&server, &r, || device_load(&r, 2, 300));
    let (img, ends) = replay(&server);
    assert!(
        img == r.device_image(),
        "replayed backup differs from the device"
    );
    assert!(!ends.is_empty(), "no RESYNC_END was sent");
    for (seq, consistent) in ends {
        assert!(
            consistent >= seq,
            "end {seq} names consistent_seq {consistent}"
        );
    }
    // After the resync the ring records again: a new write is a record.
    assert!(r.device_write(0, &[7; 512]).unwrap().is_some());
}

#[test]
fn a_resync_interrupted_by_a_disconnect_is_redone_and_its_seqs_filled() {
    // The first connection dies in the middle of the resync's chunks.
    let server = TestServer::start(|n| match n {
        0 => ConnPolicy {
            drop_after: Some(40),
            ..Default::default()
        },
        _ => ConnPolicy::default(),
    });
    let r = tracking_ring(64 << 10);
    device_load(&r, 3, 600);
    assert!(r.view().is_tracking());
    resync_until_done(&server, &r, || device_load(&r, 4, 100));
    assert!(server.shared.connections.load(Ordering::SeqCst) >= 2);
    let (img, _) = replay(&server);
    assert!(
        img == r.device_image(),
        "replayed backup differs from the device"
    );
    // Seqs reserved by the interrupted resync were filled with empty
    // RESYNC records, so the stream stayed gapless (the server checks).
    let empty = server
        .shared
        .durable
        .lock()
        .unwrap()
        .iter()
        .filter(|b| {
            let rec = rtbackup_proto::parse_record(b).unwrap();
            rec.header.op == RTB_OP_RESYNC && rec.payload.is_empty()
        })
        .count();
    assert!(empty > 0, "no reserved seq needed filling");
}

#[test]
fn a_full_resync_copies_the_whole_device() {
    let server = TestServer::start(|_| ConnPolicy::default());
    let r = tracking_ring(1 << 20);
    // Data written before anything was recorded (an initial sync).
    r.device_write(0, &[0x5a; 4096]).unwrap();
    r.device_write(8000, &[0xa5; 4096]).unwrap();
    r.resync(rtbackup_ring::ResyncOp::TrackAll).unwrap();
    resync_until_done(&server, &r, || device_load(&r, 5, 200));
    let (img, _) = replay(&server);
    assert!(
        img == r.device_image(),
        "replayed backup differs from the device"
    );
}
