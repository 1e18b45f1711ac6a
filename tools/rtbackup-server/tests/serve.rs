//! Drives the real `rtbackup-server` binary over TCP with a test client.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rtbackup_proto::{
    append_record, build_record, chunk_checksum, read_frame, write_frame, write_records_frame,
    ChunkChecksum, ErrorMsg, Frame, Hello, ProtoError, VerifyPoint, VerifyRequest, Welcome,
    MAX_CHECKSUMS_PER_FRAME, PROTOCOL_VERSION, RTB_OP_DISCARD, RTB_OP_FLUSH, RTB_OP_RESYNC,
    RTB_OP_RESYNC_END, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES, RTB_REC_PREFLUSH,
};

const BIN: &str = env!("CARGO_BIN_EXE_rtbackup-server");
const SIZE: u64 = 1 << 20;

struct ServerProc {
    child: Child,
    addr: String,
    nbd: String,
    store: PathBuf,
}

impl ServerProc {
    /// A server keeping all history: test records carry timestamps near
    /// 1970, which any time-based retention would fold at once.
    fn start(store: &Path) -> Self {
        Self::start_with(store, &["--keep", "forever"])
    }

    fn start_with(store: &Path, extra: &[&str]) -> Self {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(store.with_extension("log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["--log-level", "debug", "serve", "--store"])
            .arg(store)
            .args(["--listen", "127.0.0.1:0", "--segment-mib", "1"])
            .arg("--insecure-loopback-only")
            .args(["--nbd-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        line.clear();
        out.read_line(&mut line).unwrap();
        let nbd = line
            .trim()
            .strip_prefix("nbd on ")
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
            .to_owned();
        Self {
            child,
            addr,
            nbd,
            store: store.to_owned(),
        }
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        self.child.wait().unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.store.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records and the model image of the device at the last consistency point
/// (`at_cp` ignores resync sections: streams with them check points
/// themselves).
struct Stream {
    recs: Vec<Vec<u8>>,
    image: Vec<u8>,
    at_cp: Vec<u8>,
    rng: u64,
    /// Added to each record's seq to make its timestamp.
    t0: u64,
}

impl Stream {
    fn new(seed: u64) -> Self {
        Self {
            recs: Vec::new(),
            image: vec![0; SIZE as usize],
            at_cp: vec![0; SIZE as usize],
            rng: seed | 1,
            t0: 0,
        }
    }

    /// A stream whose records are timestamped from now on.
    fn now(seed: u64) -> Self {
        Self {
            t0: now_ns(),
            ..Self::new(seed)
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn seq(&self) -> u64 {
        self.recs.len() as u64 + 1
    }

    fn write(&mut self, sector: u64, data: &[u8], flags: u8) {
        if flags & RTB_REC_PREFLUSH != 0 {
            self.at_cp = self.image.clone();
        }
        let s = sector as usize * 512;
        self.image[s..s + data.len()].copy_from_slice(data);
        let seq = self.seq();
        self.recs.push(build_record(
            RTB_OP_WRITE,
            flags,
            seq,
            sector,
            data.len() as u64,
            self.t0 + seq,
            data,
        ));
    }

    fn zero(&mut self, op: u8, sector: u64, len: u64) {
        let s = sector as usize * 512;
        self.image[s..s + len as usize].fill(0);
        let seq = self.seq();
        self.recs
            .push(build_record(op, 0, seq, sector, len, self.t0 + seq, &[]));
    }

    fn flush(&mut self) {
        self.at_cp = self.image.clone();
        let seq = self.seq();
        self.recs
            .push(build_record(RTB_OP_FLUSH, 0, seq, 0, 0, self.t0 + seq, &[]));
    }

    /// A chunk read by a resync (`data` empty: a reserved seq filled).
    fn resync(&mut self, sector: u64, data: &[u8]) {
        let s = sector as usize * 512;
        self.image[s..s + data.len()].copy_from_slice(data);
        let seq = self.seq();
        let len = data.len() as u64;
        self.recs.push(build_record(
            RTB_OP_RESYNC,
            0,
            seq,
            sector,
            len,
            self.t0 + seq,
            data,
        ));
    }

    /// The end of a resync's data.
    fn resync_end(&mut self, consistent_seq: u64) {
        let seq = self.seq();
        let payload = consistent_seq.to_le_bytes();
        self.recs.push(build_record(
            RTB_OP_RESYNC_END,
            0,
            seq,
            0,
            0,
            self.t0 + seq,
            &payload,
        ));
    }

    /// Adds `n` random records; the last is a flush.
    fn random(&mut self, n: usize) {
        let sectors = SIZE / 512;
        for i in 0..n - 1 {
            match self.rand(10) {
                0 => {
                    let len = (1 + self.rand(32)) * 512;
                    let s = self.rand(sectors - 32);
                    self.zero(RTB_OP_DISCARD, s, len);
                }
                1 => {
                    let len = (1 + self.rand(8)) * 512;
                    let s = self.rand(sectors - 8);
                    self.zero(RTB_OP_WRITE_ZEROES, s, len);
                }
                2 => self.flush(),
                _ => {
                    let len = (1 + self.rand(16)) as usize * 512;
                    let s = self.rand(sectors - 16);
                    let b = (i % 251) as u8 + 1;
                    let data: Vec<u8> = (0..len).map(|j| b ^ (j as u8)).collect();
                    let flags = if self.rand(8) == 0 {
                        RTB_REC_PREFLUSH
                    } else {
                        0
                    };
                    self.write(s, &data, flags);
                }
            }
        }
        self.flush();
    }
}

#[derive(Debug)]
struct Client {
    s: TcpStream,
}

fn hello(volume: &str, size: u64, ring: u64) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        volume: volume.into(),
        size_bytes: size,
        block_size: 512,
        ring_id: ring,
        client: "test".into(),
        agent_version: "test".into(),
    }
}

impl Client {
    /// Connects and handshakes; retries while the volume is busy (a
    /// previous connection still finishing).
    fn connect(addr: &str, h: &Hello) -> Result<(Client, Welcome), ErrorMsg> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            write_frame(&mut s, &Frame::Hello(h.clone())).unwrap();
            match read_frame(&mut s).unwrap() {
                Frame::Welcome(w) => return Ok((Client { s }, w)),
                Frame::Error(e) if e.code == "volume-busy" && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Frame::Error(e) => return Err(e),
                f => panic!("unexpected {f:?}"),
            }
        }
    }

    fn send(&mut self, recs: &[Vec<u8>]) -> std::io::Result<()> {
        let parts: Vec<&[u8]> = recs.iter().map(|r| &r[..]).collect();
        write_records_frame(&mut self.s, &parts).map_err(|e| match e {
            rtbackup_proto::ProtoError::Io(e) => e,
            e => panic!("{e}"),
        })
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// Reads ACKs until one reaches `seq`.
    fn wait_ack(&mut self, seq: u64) -> u64 {
        loop {
            match read_frame(&mut self.s).unwrap() {
                Frame::Ack(a) if a >= seq => return a,
                Frame::Ack(_) => {}
                f => panic!("unexpected {f:?}"),
            }
        }
    }

    /// Reads until an ERROR frame (skipping ACKs) or the end of the stream.
    fn expect_error(&mut self) -> Option<ErrorMsg> {
        loop {
            match read_frame(&mut self.s) {
                Ok(Frame::Ack(_)) => {}
                Ok(Frame::Error(e)) => return Some(e),
                Ok(f) => panic!("unexpected {f:?}"),
                Err(_) => return None,
            }
        }
    }
}

/// Sends `recs[from..to]` in frames of 1..=7 records.
fn send_all(c: &mut Client, recs: &[Vec<u8>], from: usize, to: usize) {
    let mut i = from;
    let mut k = 1;
    while i < to {
        let j = (i + k).min(to);
        c.send(&recs[i..j]).unwrap();
        i = j;
        k = k % 7 + 1;
    }
}

fn restore(store: &Path, volume: &str, out: &Path) -> serde_json::Value {
    let o = Command::new(BIN)
        .args(["restore", "--json", "--store"])
        .arg(store)
        .args(["--volume", volume, "--output"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn status(store: &Path, volume: &str) -> serde_json::Value {
    let o = Command::new(BIN)
        .args(["status", "--json", "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume"] == volume)
        .cloned()
        .unwrap_or_else(|| panic!("no volume {volume} in {v}"))
}

fn assert_restores(store: &Path, volume: &str, model: &[u8], seq: u64) {
    let out = store.with_extension(format!("{volume}.img"));
    let rep = restore(store, volume, &out);
    assert_eq!(rep["seq"], seq, "{rep}");
    assert_eq!(rep["bytes"], SIZE);
    let got = fs::read(&out).unwrap();
    assert!(
        got == model,
        "restored image of {volume} differs from the model"
    );
}

#[test]
fn stream_disconnect_resume_and_restore() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let mut srv = ServerProc::start(&store);
    let mut st = Stream::new(7);
    st.random(300);
    let h = hello("db1", SIZE, 0x1234);
    let (mut c, w) = Client::connect(&srv.addr, &h).unwrap();
    assert_eq!(w.durable_seq, 0);
    assert_eq!(w.volume, "db1");
    send_all(&mut c, &st.recs, 0, 100);
    assert!(c.wait_ack(100) >= 100);
    // Send more and disconnect without waiting.
    send_all(&mut c, &st.recs, 100, 180);
    drop(c);
    let (mut c, w) = Client::connect(&srv.addr, &h).unwrap();
    let d1 = w.durable_seq;
    assert!((100..=180).contains(&d1), "durable_seq {d1}");
    // Resend with some duplicates.
    let from = d1.saturating_sub(10) as usize;
    send_all(&mut c, &st.recs, from, 300);
    assert_eq!(c.wait_ack(300), 300);
    drop(c);
    // Another ring_id: a new epoch starting from durable_seq 0.
    let (c, w) = Client::connect(&srv.addr, &hello("db1", SIZE, 0x9999)).unwrap();
    assert_eq!(w.durable_seq, 0);
    drop(c);
    // The same ring again still knows its position.
    let (c, w) = Client::connect(&srv.addr, &h).unwrap();
    assert_eq!(w.durable_seq, 300);
    drop(c);
    // A size mismatch is refused.
    let e = Client::connect(&srv.addr, &hello("db1", SIZE * 2, 0x1234)).unwrap_err();
    assert_eq!(e.code, "size-mismatch");
    // Restore while the server runs.
    assert_restores(&store, "db1", &st.at_cp, 300);
    let s = status(&store, "db1");
    assert_eq!(s["durable_seq"], 300, "{s}");
    assert_eq!(s["size_bytes"], SIZE);
    let status = srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", srv.log());
    let s = status_after(&store);
    assert_eq!(s["applied_seq"], 300, "{s}");
    assert_restores(&store, "db1", &st.at_cp, 300);
}

fn status_after(store: &Path) -> serde_json::Value {
    status(store, "db1")
}

#[test]
fn two_volumes_at_once_and_busy() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let mut a = Stream::new(1);
    a.random(400);
    let mut b = Stream::new(2);
    b.random(400);
    let (mut ca, _) = Client::connect(&srv.addr, &hello("a", SIZE, 1)).unwrap();
    let (mut cb, _) = Client::connect(&srv.addr, &hello("b", SIZE, 2)).unwrap();
    // A second connection for a busy volume is refused (another ring: the
    // same ring would end the first connection, see
    // `same_ring_reconnecting_ends_its_half_open_connection`).
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write_frame(&mut s, &Frame::Hello(hello("a", SIZE, 99))).unwrap();
    match read_frame(&mut s).unwrap() {
        Frame::Error(e) => assert_eq!(e.code, "volume-busy"),
        f => panic!("unexpected {f:?}"),
    }
    let ta = thread::spawn(move || {
        send_all(&mut ca, &a.recs, 0, 400);
        assert_eq!(ca.wait_ack(400), 400);
        a
    });
    let tb = thread::spawn(move || {
        send_all(&mut cb, &b.recs, 0, 400);
        assert_eq!(cb.wait_ack(400), 400);
        b
    });
    let a = ta.join().unwrap();
    let b = tb.join().unwrap();
    assert_restores(&store, "a", &a.at_cp, 400);
    assert_restores(&store, "b", &b.at_cp, 400);
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let mut srv = ServerProc::start(&store);
    let mut st = Stream::new(3);
    st.random(3000);
    let h = hello("k", SIZE, 42);
    let (c, _) = Client::connect(&srv.addr, &h).unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let mut rd = Client {
        s: c.s.try_clone().unwrap(),
    };
    let acked2 = Arc::clone(&acked);
    let reader = thread::spawn(move || {
        while let Ok(f) = read_frame(&mut rd.s) {
            if let Frame::Ack(a) = f {
                acked2.fetch_max(a, Ordering::SeqCst);
            }
        }
    });
    let recs = st.recs.clone();
    let mut sc = Client {
        s: c.s.try_clone().unwrap(),
    };
    let sender = thread::spawn(move || {
        let mut i = 0;
        while i < recs.len() {
            let j = (i + 5).min(recs.len());
            if sc.send(&recs[i..j]).is_err() {
                break;
            }
            i = j;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < 1000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    srv.signal(nix::sys::signal::Signal::SIGKILL);
    sender.join().unwrap();
    let _ = c.s.shutdown(std::net::Shutdown::Both);
    reader.join().unwrap();
    let a = acked.load(Ordering::SeqCst);
    assert!(a >= 1000, "acked {a}");
    let srv = ServerProc::start(&store);
    let (mut c, w) = Client::connect(&srv.addr, &h).unwrap();
    assert!(w.durable_seq >= a, "durable {} < acked {a}", w.durable_seq);
    eprintln!(
        "killed with {a} acked; durable after restart: {}",
        w.durable_seq
    );
    send_all(&mut c, &st.recs, w.durable_seq as usize, st.recs.len());
    let n = st.recs.len() as u64;
    // (When everything was durable before the kill, no ACK is due.)
    if w.durable_seq < n {
        assert_eq!(c.wait_ack(n), n);
    }
    assert_restores(&store, "k", &st.at_cp, n);
}

#[test]
fn bad_input_closes_only_that_connection_and_stores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);

    // A good stream on another volume, going on throughout.
    let mut good = Stream::new(5);
    good.random(600);
    let (mut cg, _) = Client::connect(&srv.addr, &hello("good", SIZE, 5)).unwrap();
    send_all(&mut cg, &good.recs, 0, 200);

    // The volume under attack gets 10 records and a flush first.
    let mut bad = Stream::new(6);
    bad.random(11);
    let h = hello("bad", SIZE, 6);
    let (mut c, _) = Client::connect(&srv.addr, &h).unwrap();
    send_all(&mut c, &bad.recs, 0, 11);
    assert_eq!(c.wait_ack(11), 11);
    drop(c);
    // Wait for the image to be advanced (and applied segments retired) after
    // the ACK, so that nothing changes in the store from here on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = status(&store, "bad");
    while (before["applied_seq"] != 11 || before["segments"] != 1) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        before = status(&store, "bad");
    }
    assert_eq!(before["applied_seq"], 11, "{before}");

    let w12 = |sector: u64, seq: u64| build_record(RTB_OP_WRITE, 0, seq, sector, 512, 0, &[1; 512]);
    let frame = |recs: &[Vec<u8>]| {
        let mut v = Vec::new();
        write_frame(&mut v, &Frame::Records(recs.concat())).unwrap();
        v
    };
    let mut cases: Vec<(&str, Vec<u8>, Option<&str>)> = Vec::new();
    cases.push((
        "garbage",
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        Some("bad-frame"),
    ));
    let mut crc = w12(0, 12);
    crc[100] ^= 1;
    cases.push((
        "payload crc",
        frame(&[w12(0, 12).clone(), crc]),
        Some("bad-record"),
    ));
    // Record 12 valid, 13 beyond the end: nothing of the frame is stored.
    cases.push((
        "out of range",
        frame(&[w12(0, 12), w12(SIZE / 512, 13)]),
        Some("out-of-range"),
    ));
    cases.push(("gap", frame(&[w12(0, 14)]), Some("seq-gap")));
    // The frame's CRC32C (header bytes 12..16) no longer matches its
    // records (a changed payload byte is the record's checksum's to find,
    // as in "payload crc").
    let mut fcrc = frame(&[w12(0, 12)]);
    fcrc[12] ^= 0xff;
    cases.push(("frame crc", fcrc, Some("bad-frame")));
    let mut ver = frame(&[w12(0, 12)]);
    ver[4] = 9;
    cases.push(("version", ver, Some("unsupported-version")));
    let trunc = frame(&[w12(0, 12)]);
    cases.push(("truncated", trunc[..trunc.len() - 10].to_vec(), None));
    let mut pad = Vec::new();
    append_record(&mut pad, rtbackup_proto::RTB_OP_PAD, 0, 0, 0, 0, 0, &[]);
    cases.push(("padding", frame(&[pad]), Some("bad-record")));

    for (name, bytes, code) in cases {
        let (mut c, w) = Client::connect(&srv.addr, &h).unwrap();
        assert_eq!(w.durable_seq, 11, "{name}");
        c.send_raw(&bytes);
        if code.is_none() {
            c.s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let e = c.expect_error();
        match code {
            Some(code) => {
                let e = e.unwrap_or_else(|| panic!("{name}: no ERROR frame"));
                assert_eq!(e.code, code, "{name}: {e:?}");
            }
            None => assert!(e.is_none(), "{name}: {e:?}"),
        }
        let after = status(&store, "bad");
        assert_eq!(after["durable_seq"], before["durable_seq"], "{name}");
        assert_eq!(after["journal_bytes"], before["journal_bytes"], "{name}");
    }
    // A bad HELLO.
    let e = Client::connect(&srv.addr, &hello("../etc", SIZE, 1)).unwrap_err();
    assert_eq!(e.code, "bad-volume");
    let mut hv = hello("x", SIZE, 1);
    hv.protocol = 2;
    assert_eq!(
        Client::connect(&srv.addr, &hv).unwrap_err().code,
        "unsupported-version"
    );

    // The good stream was not disturbed.
    send_all(&mut cg, &good.recs, 200, 600);
    assert_eq!(cg.wait_ack(600), 600);
    assert_restores(&store, "good", &good.at_cp, 600);
    assert_restores(&store, "bad", &bad.at_cp, 11);
    let log = srv.log();
    assert!(log.contains("volume=bad"), "{log}");
    assert!(
        log.contains("seq-gap") || log.contains("sequence gap"),
        "{log}"
    );
}

#[test]
fn same_ring_reconnecting_ends_its_half_open_connection() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let mut st = Stream::new(11);
    st.random(50);
    let h = hello("ho", SIZE, 77);
    let (mut old, _) = Client::connect(&srv.addr, &h).unwrap();
    send_all(&mut old, &st.recs, 0, 20);
    assert_eq!(old.wait_ack(20), 20);
    // The old connection goes silent (its host vanished, say) but is never
    // closed. The same ring reconnects: after a volume-busy or two (the
    // old connection being ended) it gets in.
    let t = Instant::now();
    let (mut c, w) = Client::connect(&srv.addr, &h).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(w.durable_seq, 20);
    // The old connection was ended by the server.
    old.s
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(old.expect_error().is_none());
    send_all(&mut c, &st.recs, 20, 50);
    assert_eq!(c.wait_ack(50), 50);
    drop(c);
    // A connection of another ring does not end the current one.
    let (mut c, _) = Client::connect(&srv.addr, &h).unwrap();
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    write_frame(&mut s, &Frame::Hello(hello("ho", SIZE, 78))).unwrap();
    match read_frame(&mut s).unwrap() {
        Frame::Error(e) => assert_eq!(e.code, "volume-busy"),
        f => panic!("unexpected {f:?}"),
    }
    let mut more = Stream::new(12);
    more.recs = st.recs.clone();
    more.flush();
    c.send(&more.recs[50..51]).unwrap();
    assert_eq!(c.wait_ack(51), 51);
    assert!(srv.log().contains("ending its previous connection"));
}

#[test]
fn stale_ring_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let mut srv = ServerProc::start(&store);
    let mut st = Stream::new(13);
    st.random(10);
    for ring in [1u64, 2] {
        let (mut c, w) = Client::connect(&srv.addr, &hello("sr", SIZE, ring)).unwrap();
        assert_eq!(w.durable_seq, 0);
        send_all(&mut c, &st.recs, 0, 10);
        assert_eq!(c.wait_ack(10), 10);
    }
    let e = Client::connect(&srv.addr, &hello("sr", SIZE, 1)).unwrap_err();
    assert_eq!(e.code, "stale-ring", "{e:?}");
    // Also after a restart, and the current ring still works.
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    let srv = ServerProc::start(&store);
    let e = Client::connect(&srv.addr, &hello("sr", SIZE, 1)).unwrap_err();
    assert_eq!(e.code, "stale-ring", "{e:?}");
    let (_, w) = Client::connect(&srv.addr, &hello("sr", SIZE, 2)).unwrap();
    assert_eq!(w.durable_seq, 10);
}

#[test]
fn seq_overflow_is_bad_input_not_a_hang() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let (mut c, _) = Client::connect(&srv.addr, &hello("ov", SIZE, 5)).unwrap();
    let recs = vec![
        build_record(RTB_OP_FLUSH, 0, u64::MAX, 0, 0, 0, &[]),
        build_record(RTB_OP_FLUSH, 0, 1, 0, 0, 0, &[]),
    ];
    c.send(&recs).unwrap();
    c.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let e = c.expect_error().expect("an ERROR frame");
    assert_eq!(e.code, "bad-record", "{e:?}");
    // The volume is still usable.
    let (mut c, w) = Client::connect(&srv.addr, &hello("ov", SIZE, 5)).unwrap();
    assert_eq!(w.durable_seq, 0);
    c.send(&recs[1..]).unwrap();
    assert_eq!(c.wait_ack(1), 1);
}

#[test]
fn connections_over_the_limit_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start_with(&store, &["--max-connections", "2"]);
    let (_a, _) = Client::connect(&srv.addr, &hello("m1", SIZE, 1)).unwrap();
    // Connected, no HELLO yet: counts too.
    let _b = TcpStream::connect(&srv.addr).unwrap();
    thread::sleep(Duration::from_millis(300));
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match read_frame(&mut s).unwrap() {
        Frame::Error(e) => assert_eq!(e.code, "too-many-connections", "{e:?}"),
        f => panic!("unexpected {f:?}"),
    }
    drop(_b);
    // Once one ends, a new one is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&srv.addr, &hello("m2", SIZE, 2)) {
            Ok(_) => break,
            Err(e) if e.code == "too-many-connections" && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn cli_json(args: &[&str], store: &Path) -> Result<serde_json::Value, String> {
    let o = Command::new(BIN)
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--json")
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout))))
}

/// `restore --json --at AT` of `volume` to `out`.
fn restore_at(
    store: &Path,
    volume: &str,
    out: &Path,
    at: &str,
) -> Result<serde_json::Value, String> {
    let out = out.to_str().unwrap();
    let args = ["restore", "--volume", volume, "--output", out, "--at", at];
    cli_json(&args, store)
}

/// The history commands through the real binary: points, restore --at a
/// mark, a seq and a time, the audit log; then retention by time folding
/// the old points while the server runs.
#[test]
fn points_restore_at_log_and_retention() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start_with(&store, &["--keep", "3s"]);
    let t0 = now_ns();
    let mut recs = Vec::new();
    let mut rec = |op, flags, sector, len, payload: &[u8]| {
        let seq = recs.len() as u64 + 1;
        let mut r = Vec::new();
        append_record(
            &mut r,
            op,
            flags,
            seq,
            sector,
            len,
            t0 + seq * 1000,
            payload,
        );
        recs.push(r);
    };
    rec(RTB_OP_WRITE, 0, 0, 512, &[0xa1; 512]);
    rec(RTB_OP_FLUSH, 0, 0, 0, &[]);
    rec(rtbackup_proto::RTB_OP_MARK, 0, 0, 0, b"before-upgrade");
    rec(RTB_OP_WRITE, 0, 0, 512, &[0xb2; 512]);
    rec(RTB_OP_FLUSH, 0, 0, 0, &[]);
    let (mut c, _) = Client::connect(&srv.addr, &hello("h", SIZE, 0x77)).unwrap();
    c.send(&recs).unwrap();
    assert_eq!(c.wait_ack(5), 5);

    let points = cli_json(&["points", "--volume", "h"], &store).unwrap();
    let seqs: Vec<_> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].clone())
        .collect();
    assert_eq!(seqs, [0, 2, 5], "{points}");
    assert_eq!(points[1]["marks"][0], "before-upgrade", "{points}");
    assert_eq!(points[1]["kind"], "flush");

    let out = d.path().join("at.img");
    let restore_at = |at: &str| restore_at(&store, "h", &out, at);
    let rep = restore_at("mark:before-upgrade").unwrap();
    assert_eq!(rep["seq"], 2, "{rep}");
    assert_eq!(rep["point"]["marks"][0], "before-upgrade");
    assert_eq!(fs::read(&out).unwrap()[..512], [0xa1; 512]);
    assert_eq!(restore_at("seq:4").unwrap()["seq"], 2);
    assert_eq!(restore_at("latest").unwrap()["seq"], 5);
    assert_eq!(fs::read(&out).unwrap()[..512], [0xb2; 512]);
    let when = points[1]["time"].as_str().unwrap().to_owned();
    assert_eq!(restore_at(&when).unwrap()["seq"], 2);
    for (bad, why) in [
        ("mark:nope", "no mark"),
        ("yesterday-ish", "cannot read"),
        ("1990-01-01T00:00:00Z", "before the oldest restore point"),
    ] {
        let e = restore_at(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }

    // The same states over NBD, read by qemu-img; writes are refused.
    let nbd_read = |export: &str| {
        let img = d.path().join("nbd.img");
        let o = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(format!("nbd://{}/{export}", srv.nbd))
            .arg(&img)
            .output()
            .expect("qemu-img (qemu-utils; make deps installs it)");
        assert!(
            o.status.success(),
            "{export}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            srv.log()
        );
        fs::read(&img).unwrap()
    };
    restore_at("mark:before-upgrade").unwrap();
    assert!(nbd_read("h@mark:before-upgrade") == fs::read(&out).unwrap());
    restore_at("latest").unwrap();
    assert!(nbd_read("h") == fs::read(&out).unwrap());
    assert!(nbd_read("h@latest") == fs::read(&out).unwrap());
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x55 0 512"])
        .arg(format!("nbd://{}/h", srv.nbd))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !text.contains("wrote 512"),
        "write over NBD succeeded: {text}"
    );
    assert!(
        text.to_lowercase().contains("read-only") || text.contains("ermission"),
        "write over NBD: {text}"
    );
    let o = Command::new("qemu-img")
        .args(["info"])
        .arg(format!("nbd://{}/h@mark:nope", srv.nbd))
        .output()
        .unwrap();
    assert!(!o.status.success(), "unknown mark exported");

    let log = cli_json(
        &["log", "--volume", "h", "--since", "mark:before-upgrade"],
        &store,
    )
    .unwrap();
    let ops: Vec<_> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ops, ["MARK", "WRITE", "FLUSH"], "{log}");
    assert_eq!(log[1]["length"], 512);

    // Past the retention time, the server folds the old points into the
    // base image; the latest state stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = cli_json(&["points", "--volume", "h"], &store).unwrap();
        if p.as_array().unwrap().len() == 1 {
            assert_eq!(p[0]["seq"], 5, "{p}");
            assert_eq!(p[0]["kind"], "base");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing folded: {p}\n{}",
            srv.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert!(restore_at("mark:before-upgrade")
        .unwrap_err()
        .contains("no mark"));
    assert_eq!(restore_at("latest").unwrap()["seq"], 5);
    assert_eq!(fs::read(&out).unwrap()[..512], [0xb2; 512]);
}

/// Waits up to 30 s for `cond` on the volume's status or points.
fn wait_for(what: &str, srv: &ServerProc, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cond() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}\n{}", srv.log()),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The delayed image and retention move with the clock on the server's own
/// maintenance thread: with no agent connected (the agent went away, or the
/// server was restarted and the client never came back).
#[test]
fn delayed_image_and_retention_advance_with_no_agent_connected() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let mut model = Stream::now(5);
    model.random(40);
    let last = model.recs.len() as u64;
    {
        let srv = ServerProc::start_with(&store, &["--keep", "forever", "--apply-delay", "3s"]);
        let (mut c, _) = Client::connect(&srv.addr, &hello("quiet", SIZE, 0x51)).unwrap();
        c.send(&model.recs).unwrap();
        assert_eq!(c.wait_ack(last), last);
        drop(c);
        let st = status(&store, "quiet");
        assert!(
            st["applied_seq"].as_u64().unwrap() < last,
            "the image did not wait for the delay: {st}"
        );
        wait_for("delayed image with no agent", &srv, || {
            let st = status(&store, "quiet");
            if st["applied_seq"] == last {
                Ok(())
            } else {
                Err(format!("image still behind: {st}"))
            }
        });
    }
    assert_restores(&store, "quiet", &model.image, last);
    let before = cli_json(&["points", "--volume", "quiet"], &store).unwrap();
    assert!(before.as_array().unwrap().len() > 1, "{before}");

    // A restarted server with a short retention folds the history of a
    // volume whose agent never connects again.
    let srv = ServerProc::start_with(&store, &["--keep", "1s"]);
    wait_for("retention with no agent", &srv, || {
        let p = cli_json(&["points", "--volume", "quiet"], &store)?;
        match p.as_array().map(Vec::len) {
            Some(1) if p[0]["kind"] == "base" && p[0]["seq"] == last => Ok(()),
            _ => Err(format!("not folded: {p}")),
        }
    });
    drop(srv);
    assert_restores(&store, "quiet", &model.image, last);
}

/// A rollback through the real server: a device in the newest state gets
/// back the bytes of a mark by writing only the ranges changed since.
#[test]
fn rollback_writes_back_only_what_changed() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let t0 = now_ns();
    let mut recs = Vec::new();
    let mut model = vec![0u8; SIZE as usize];
    let mut at_mark = Vec::new();
    let mut push = |op, sector: u64, len: u64, payload: &[u8], model: &mut Vec<u8>| {
        let seq = recs.len() as u64 + 1;
        let mut r = Vec::new();
        append_record(&mut r, op, 0, seq, sector, len, t0 + seq, payload);
        recs.push(r);
        let s = (sector * 512) as usize;
        match op {
            RTB_OP_WRITE => model[s..s + payload.len()].copy_from_slice(payload),
            RTB_OP_DISCARD => model[s..s + len as usize].fill(0),
            _ => {}
        }
    };
    // A filled disk, marked; then an "attack" on a few places.
    for i in 0..64u64 {
        push(
            RTB_OP_WRITE,
            i * 32,
            16384,
            &[i as u8 + 1; 16384],
            &mut model,
        );
    }
    push(RTB_OP_FLUSH, 0, 0, &[], &mut model);
    at_mark.extend_from_slice(&model);
    push(rtbackup_proto::RTB_OP_MARK, 0, 0, b"clean", &mut model);
    push(RTB_OP_WRITE, 100, 4096, &[0xee; 4096], &mut model);
    push(RTB_OP_WRITE, 1000, 8192, &[0xdd; 8192], &mut model);
    push(RTB_OP_DISCARD, 40, 1024, &[], &mut model);
    push(RTB_OP_WRITE, 101, 1024, &[0xcc; 1024], &mut model);
    push(RTB_OP_FLUSH, 0, 0, &[], &mut model);
    let n = recs.len() as u64;
    let (mut c, _) = Client::connect(&srv.addr, &hello("victim", SIZE, 0x99)).unwrap();
    c.send(&recs).unwrap();
    assert_eq!(c.wait_ack(n), n);

    let dev = d.path().join("device.img");
    fs::write(&dev, &model).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .unwrap();
    let req = |point: &str, dry_run| rtbackup_rollback::Request {
        server: srv.addr.clone(),
        volume: "victim".into(),
        point: point.into(),
        dry_run,
        size_bytes: SIZE,
        client: "test".into(),
        credentials: None,
    };
    // A dry run plans without sending data.
    let plan = rtbackup_rollback::run(&req("mark:clean", true), &f, |_, _| {}).unwrap();
    assert_eq!(plan.plan.marks, ["clean"]);
    assert_eq!(plan.plan.seq, 65);
    // Ranges: [100*512, +4096) and [101*512, +1024) merge; [1000*512,
    // +8192); [40*512, +1024).
    assert_eq!(plan.plan.extents, 3, "{plan:?}");
    assert_eq!(plan.plan.bytes, 4096 + 8192 + 1024);
    assert_eq!(plan.bytes_written, 0);
    assert!(fs::read(&dev).unwrap() == model);

    let mut calls = 0;
    let out = rtbackup_rollback::run(&req("mark:clean", false), &f, |done, total| {
        assert!(done <= total);
        calls += 1;
    })
    .unwrap();
    assert_eq!(out.bytes_written, 4096 + 8192 + 1024);
    assert!(calls >= 2);
    assert!(
        fs::read(&dev).unwrap() == at_mark,
        "device differs from the mark"
    );

    // Refusals: unknown volume or mark, wrong size.
    for (r, code) in [
        (
            rtbackup_rollback::Request {
                volume: "nope".into(),
                ..req("latest", false)
            },
            "bad-volume",
        ),
        (req("mark:nope", false), "bad-volume"),
        (
            rtbackup_rollback::Request {
                size_bytes: SIZE * 2,
                ..req("latest", false)
            },
            "size-mismatch",
        ),
        (req("not a point", false), "protocol"),
    ] {
        match rtbackup_rollback::run(&r, &f, |_, _| {}) {
            Err(rtbackup_rollback::RollbackError::Client(e)) => assert_eq!(e.code(), Some(code)),
            other => panic!("{r:?}: {other:?}"),
        }
    }
    assert!(fs::read(&dev).unwrap() == at_mark);
}

/// A resync section through the real binary: while it is open the volume
/// shows as resyncing, a flush inside it is no restore point, and the image
/// and the latest restore stay at the point before it; once it has closed,
/// the restore is the whole stream.
#[test]
fn a_resync_section_hides_its_points_until_it_closes() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let mut s = Stream::new(3);
    s.write(0, &[0xa1; 1024], 0); // 1
    s.flush(); // 2: a point
    let at2 = s.image.clone();
    s.resync(64, &[0xc1; 4096]); // 3: opens a section
    s.resync(0, &[]); // 4: a reserved seq filled
    s.write(8, &[0xb2; 512], 0); // 5
    s.flush(); // 6: inside, no point
    let (mut c, _) = Client::connect(&srv.addr, &hello("rs", SIZE, 0x5e)).unwrap();
    c.send(&s.recs).unwrap();
    assert_eq!(c.wait_ack(6), 6);
    let point_seqs = || {
        let p = cli_json(&["points", "--volume", "rs"], &store).unwrap();
        let seqs: Vec<u64> = p
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["seq"].as_u64().unwrap())
            .collect();
        (seqs, p)
    };
    let st = status(&store, "rs");
    assert_eq!(st["resyncing"], true, "{st}");
    assert_eq!(st["resync_since_seq"], 3, "{st}");
    assert_eq!(point_seqs().0, [0, 2]);
    assert_restores(&store, "rs", &at2, 2);
    // A verify describes the end, where the section's next chunks apply:
    // its chunks and writes included, no consistency point.
    let (p, sums) = verify_all(&srv.addr, "rs", 4096);
    assert_eq!((p.seq, p.consistent), (6, false));
    assert!(sums == chunk_sums(&s.image, 4096));
    let out = d.path().join("at.img");
    let rep = restore_at(&store, "rs", &out, "seq:6").unwrap();
    assert_eq!(rep["seq"], 2, "{rep}");
    let image_at = |seq: u64, want: &[u8]| {
        wait_for("the image applied", &srv, || {
            match status(&store, "rs")["applied_seq"].as_u64() {
                Some(n) if n == seq => Ok(()),
                n => Err(format!("applied_seq {n:?}, not {seq}")),
            }
        });
        let image = fs::read(store.join("volumes/rs/image")).unwrap();
        assert!(image == want, "the image differs at seq {seq}");
    };
    image_at(2, &at2);
    let o = Command::new(BIN)
        .args(["status", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("RESYNC") && text.contains("since seq 3"),
        "{text}"
    );

    s.resync_end(8); // 7: consistent from seq 8 on
    s.write(16, &[0xd4; 512], 0); // 8
    s.flush(); // 9: closes the section
    c.send(&s.recs[6..]).unwrap();
    assert_eq!(c.wait_ack(9), 9);
    let st = status(&store, "rs");
    assert_eq!(st["resyncing"], false, "{st}");
    assert!(st["resync_since_seq"].is_null(), "{st}");
    let (seqs, p) = point_seqs();
    assert_eq!(seqs, [0, 2, 9], "{p}");
    assert_eq!(p[2]["kind"], "flush");
    assert_restores(&store, "rs", &s.image, 9);
    image_at(9, &s.image);
    let (p, sums) = verify_all(&srv.addr, "rs", 4096);
    assert_eq!((p.seq, p.consistent), (9, true));
    assert!(sums == chunk_sums(&s.image, 4096));
    let log = cli_json(&["log", "--volume", "rs", "--since", "seq:2"], &store).unwrap();
    let ops: Vec<_> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["seq"].clone(), r["op"].clone(), r["length"].clone()))
        .collect();
    assert_eq!(
        ops[..5],
        [
            (3.into(), "RESYNC".into(), 4096.into()),
            (4.into(), "RESYNC".into(), 0.into()),
            (5.into(), "WRITE".into(), 512.into()),
            (6.into(), "FLUSH".into(), 0.into()),
            (7.into(), "RESYNC_END".into(), 0.into()),
        ],
        "{log}"
    );
    assert_eq!(log[4]["consistent_seq"], 8, "{log}");
    assert!(log[0].get("consistent_seq").is_none(), "{log}");
}

/// A verify of all of `volume` (of [`SIZE`]) through the client crate.
fn verify_all(addr: &str, volume: &str, chunk_size: u64) -> (VerifyPoint, Vec<ChunkChecksum>) {
    let req = VerifyRequest::new(volume, "test", chunk_size, SIZE);
    let mut got = Vec::new();
    let p = rtbackup_verify::fetch_checksums(addr, None, &req, |first, sums| {
        assert_eq!(first, got.len() as u64);
        got.extend_from_slice(sums);
        Ok::<_, rtbackup_verify::VerifyError>(())
    })
    .unwrap();
    (p, got)
}

fn chunk_sums(image: &[u8], chunk_size: u64) -> Vec<ChunkChecksum> {
    image
        .chunks(chunk_size as usize)
        .map(chunk_checksum)
        .collect()
}

/// Opens a connection and sends `req` as its first frame.
fn verify_conn(addr: &str, req: &VerifyRequest) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write_frame(&mut s, &Frame::Verify(req.clone())).unwrap();
    s
}

/// Reads a verify's answer after its VERIFY_POINT: the CHECKSUMS frames
/// (checked to come in order, 1 to 65536 each) up to DONE, which must
/// count them and the volume's bytes; then the server closes.
fn read_checksums(s: &mut TcpStream, p: &VerifyPoint, size: u64) -> Vec<ChunkChecksum> {
    let mut all = Vec::new();
    let mut frames = 0;
    loop {
        match read_frame(s).unwrap() {
            Frame::Checksums { first_chunk, sums } => {
                assert_eq!(first_chunk, all.len() as u64);
                assert!((1..=MAX_CHECKSUMS_PER_FRAME).contains(&sums.len()));
                all.extend(sums);
                frames += 1;
            }
            Frame::Done(d) => {
                assert_eq!((d.frames, d.bytes), (frames, size));
                break;
            }
            f => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(all.len() as u64, p.chunks);
    assert!(matches!(read_frame(s), Err(ProtoError::Closed)));
    all
}

fn expect_verify_point(s: &mut TcpStream) -> VerifyPoint {
    match read_frame(s).unwrap() {
        Frame::VerifyPoint(p) => p,
        f => panic!("unexpected {f:?}"),
    }
}

/// A verify through the real server, while the volume's agent is connected
/// and streams: the checksums of the end of the durable journal, where the
/// agent's next records apply (the write after the last flush included:
/// `consistent` false), at every chunk size, while `restore` and `points`
/// stay at the latest point; after a flush, `consistent`. Through the
/// client crate too; refusals.
#[test]
fn verify_sends_the_checksums_of_the_durable_end() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let mut s = Stream::new(11);
    s.random(400);
    let point_seq = s.recs.len() as u64;
    // Not followed by a consistency point: not in the latest point, but
    // durable, and what the next records of the volume apply on top of.
    s.write(5, &[0x5a; 1024], 0);
    let n = s.recs.len() as u64;
    let (mut agent, _) = Client::connect(&srv.addr, &hello("v", SIZE, 0x42)).unwrap();
    send_all(&mut agent, &s.recs, 0, n as usize);
    assert_eq!(agent.wait_ack(n), n);
    let out = d.path().join("restored.img");
    let rep = restore(&store, "v", &out);
    assert_eq!(rep["seq"], point_seq);
    assert!(fs::read(&out).unwrap() == s.at_cp);
    let points = cli_json(&["points", "--volume", "v"], &store).unwrap();
    let latest = points.as_array().unwrap().last().unwrap().clone();
    assert_eq!(latest["seq"], point_seq);
    let log = cli_json(&["log", "--volume", "v", "--since", "seq:400"], &store).unwrap();
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["seq"], n, "{last}");
    let img = s.image.clone();
    assert!(img != s.at_cp);

    for chunk_size in [4096u64, 64 << 10, 16 << 20] {
        let req = VerifyRequest::new("v", "test", chunk_size, SIZE);
        let mut v = verify_conn(&srv.addr, &req);
        let p = expect_verify_point(&mut v);
        assert_eq!((p.seq, p.ring_id, p.consistent), (n, 0x42, false));
        assert_eq!(p.time, last["time"], "{last}");
        assert_eq!(
            (p.chunk_size, p.chunks),
            (chunk_size, SIZE.div_ceil(chunk_size))
        );
        if chunk_size == 16 << 20 {
            // The agent goes on meanwhile: new records do not change what
            // this verify describes.
            s.write(0, &[0x6b; 4096], 0);
            s.flush();
            agent.send(&s.recs[n as usize..]).unwrap();
            assert_eq!(agent.wait_ack(n + 2), n + 2);
        }
        let sums = read_checksums(&mut v, &p, SIZE);
        assert!(
            sums == chunk_sums(&img, chunk_size),
            "chunk size {chunk_size}: checksums differ"
        );
    }

    // The client crate, after the flush: the end is the latest point.
    let (p, got) = verify_all(&srv.addr, "v", 8192);
    assert_eq!((p.seq, p.consistent), (n + 2, true));
    assert!(got == chunk_sums(&s.image, 8192));
    let e = rtbackup_verify::fetch_checksums(
        &srv.addr,
        None,
        &VerifyRequest::new("nope", "test", 4096, SIZE),
        |_, _| Ok::<_, rtbackup_verify::VerifyError>(()),
    )
    .unwrap_err();
    assert!(e.is_no_such_volume(), "{e}");

    // Refusals, each an ERROR and the end of the connection.
    let refused = |req: VerifyRequest, code: &str| {
        let mut v = verify_conn(&srv.addr, &req);
        match read_frame(&mut v).unwrap() {
            Frame::Error(e) => assert_eq!(e.code, code, "{req:?}: {e}"),
            f => panic!("{req:?}: unexpected {f:?}"),
        }
        assert!(read_frame(&mut v).is_err());
    };
    refused(
        VerifyRequest::new("v", "t", 4096, SIZE * 2),
        "size-mismatch",
    );
    refused(
        VerifyRequest::new("v", "t", 4096, SIZE - 4096),
        "size-mismatch",
    );
    refused(
        VerifyRequest::new("nope", "t", 4096, SIZE),
        "no-such-volume",
    );
    refused(VerifyRequest::new("../v", "t", 4096, SIZE), "bad-volume");
    for bad in [0, 512, 2048, 4095, 12288, 32 << 20, u64::MAX] {
        refused(VerifyRequest::new("v", "t", bad, SIZE), "protocol");
    }
    refused(
        VerifyRequest {
            protocol: 2,
            ..VerifyRequest::new("v", "t", 4096, SIZE)
        },
        "unsupported-version",
    );
    // The agent was never disturbed.
    s.write(9, &[0x77; 512], 0);
    s.flush();
    agent.send(&s.recs[n as usize + 2..]).unwrap();
    assert_eq!(agent.wait_ack(n + 4), n + 4);
    let log = srv.log();
    assert!(log.contains("verify done"), "{log}");
}

/// A volume of more than 65536 chunks: several CHECKSUMS frames, the last
/// chunk short; the data at both ends.
#[test]
fn verify_of_a_large_volume_takes_several_frames() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let srv = ServerProc::start(&store);
    let size: u64 = (256 << 20) + 2048;
    let (mut agent, _) = Client::connect(&srv.addr, &hello("big", size, 0x43)).unwrap();
    let last_sector = size / 512 - 4;
    let recs = vec![
        build_record(RTB_OP_WRITE, 0, 1, 0, 4096, 1, &[0x11; 4096]),
        build_record(RTB_OP_WRITE, 0, 2, last_sector, 2048, 2, &[0x22; 2048]),
        build_record(RTB_OP_FLUSH, 0, 3, 0, 0, 3, &[]),
    ];
    agent.send(&recs).unwrap();
    assert_eq!(agent.wait_ack(3), 3);
    let req = VerifyRequest::new("big", "test", 4096, size);
    let mut v = verify_conn(&srv.addr, &req);
    let p = expect_verify_point(&mut v);
    assert_eq!((p.seq, p.chunks), (3, 65537));
    let sums = read_checksums(&mut v, &p, size);
    let zero = chunk_checksum(&[0; 4096]);
    assert_eq!(sums[0], chunk_checksum(&[0x11; 4096]));
    assert!(sums[1..65536].iter().all(|s| *s == zero));
    assert_eq!(sums[65536], chunk_checksum(&[0x22; 2048]));
}
