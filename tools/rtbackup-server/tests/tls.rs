//! The server with TLS, through its binary: `init`, `enroll`, `revoke`,
//! `clients`; who gets in, and which volumes each client may use.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rtbackup_proto::{
    append_record, read_frame, write_frame, write_records_frame, Frame, Hello, VerifyRequest,
    PROTOCOL_VERSION, RTB_OP_FLUSH, RTB_OP_WRITE,
};
use rtbackup_tls::{Credentials, Link};

const BIN: &str = env!("CARGO_BIN_EXE_rtbackup-server");
const SIZE: u64 = 1 << 20;
const T: Duration = Duration::from_secs(30);

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn enroll(store: &Path, client: &str) -> Credentials {
    enroll_with(store, client, &[])
}

/// `enroll` with more options.
fn enroll_with(store: &Path, client: &str, args: &[&str]) -> Credentials {
    let out = cli(&[
        &["enroll", "--store", store.to_str().unwrap(), client],
        args,
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether HELLO was answered with ERROR `code`.
fn refused(r: Result<(Link, Frame), String>, code: &str) -> bool {
    matches!(r, Ok((_, Frame::Error(e))) if e.code == code)
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server, started by a shell after `setup` (`umask 000`, a
/// `ulimit`): the shell execs it, so the child's pid is the server's.
fn serve_after(store: &Path, setup: &str) -> Server {
    let s = store.to_str().unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("{setup} && exec {BIN} serve --store {s} --listen 127.0.0.1:0 --keep forever"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    Server { child, addr }
}

fn serve(store: &Path) -> Server {
    serve_with(store, &[])
}

fn serve_with(store: &Path, args: &[&str]) -> Server {
    serve_lines(store, args, 1).0
}

/// The server with `args`, and the first `lines` lines it prints (its
/// addresses).
fn serve_lines(store: &Path, args: &[&str], lines: usize) -> (Server, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--store", store.to_str().unwrap()])
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--keep", "forever"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let printed: Vec<String> = (0..lines)
        .map(|_| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim().to_owned()
        })
        .collect();
    let addr = printed[0].strip_prefix("listening on ").unwrap().to_owned();
    (Server { child, addr }, printed)
}

fn hello(volume: &str) -> Frame {
    Frame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        volume: volume.into(),
        size_bytes: SIZE,
        block_size: 512,
        ring_id: 7,
        client: "ignored: the certificate names the client".into(),
        agent_version: "test".into(),
    })
}

/// Connects as `creds` (TLS) and says HELLO: the first frame answered, or
/// the error that ended the connection.
fn say_hello(addr: &str, creds: &Credentials, volume: &str) -> Result<(Link, Frame), String> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let link =
        rtbackup_tls::connect(tcp, creds.client_config().unwrap(), T).map_err(|e| e.to_string())?;
    write_frame(&mut &link, &hello(volume)).map_err(|e| e.to_string())?;
    let f = read_frame(&mut &link).map_err(|e| e.to_string())?;
    Ok((link, f))
}

/// Records of 512-byte writes with seqs `seqs`, each at sector `seq * 8`.
fn writes(seqs: std::ops::Range<u64>) -> Vec<u8> {
    let mut recs = Vec::new();
    for seq in seqs {
        append_record(
            &mut recs,
            RTB_OP_WRITE,
            0,
            seq,
            seq * 8,
            512,
            seq,
            &[seq as u8; 512],
        );
    }
    recs
}

/// Streams `n` writes and a flush as ring 7 from seq 1; waits for the ACK.
fn stream(link: &Link, n: u64) {
    let mut recs = writes(1..n + 1);
    append_record(&mut recs, RTB_OP_FLUSH, 0, n + 1, 0, 0, n + 1, &[]);
    write_records_frame(&mut &*link, &[&recs]).unwrap();
    loop {
        match read_frame(&mut &*link).unwrap() {
            Frame::Ack(a) if a == n + 1 => return,
            Frame::Ack(_) => {}
            f => panic!("{f:?}"),
        }
    }
}

/// The checksums of `volume` as client `creds` asks for them.
fn verify_as(
    addr: &str,
    creds: &Credentials,
    volume: &str,
) -> Result<rtbackup_proto::VerifyPoint, rtbackup_verify::VerifyError> {
    let req = VerifyRequest::new(volume, &creds.client, 4096, SIZE);
    rtbackup_verify::fetch_checksums(addr, Some(creds), &req, |_, _| {
        Ok::<_, rtbackup_verify::VerifyError>(())
    })
}

fn durable_seq(store: &Path, volume: &str) -> u64 {
    let out = cli(&["status", "--store", store.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume"] == volume)
        .map(|s| s["durable_seq"].as_u64().unwrap())
        .unwrap()
}

/// A socket that holds a TLS handshake open: a record header announcing
/// 512 bytes, then one byte every half second. Returns when the server
/// closes it (or after 60 s), with how long that took.
fn slowloris(addr: &str) -> std::thread::JoinHandle<Duration> {
    let mut s = TcpStream::connect(addr).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let start = std::time::Instant::now();
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        while start.elapsed() < Duration::from_secs(60) {
            if s.write_all(&[0]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        start.elapsed()
    })
}

/// Sockets in their TLS handshake, trickling a byte every half second,
/// take none of the `--max-connections` slots and are cut off at
/// `--handshake-timeout`: agents get in meanwhile, and the slots count
/// authenticated connections only. Beyond 64 handshakes at once, a new
/// connection ends the oldest.
#[test]
fn handshakes_in_progress_keep_no_agent_out() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let alice = enroll(&store, "alice");
    let srv = serve_with(
        &store,
        &["--max-connections", "2", "--handshake-timeout", "3s"],
    );
    let slow: Vec<_> = (0..4).map(|_| slowloris(&srv.addr)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let (a, w) = say_hello(&srv.addr, &alice, "va").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    let (b, w) = say_hello(&srv.addr, &alice, "vb").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    // Two authenticated: the third is refused.
    match say_hello(&srv.addr, &alice, "vc") {
        Ok((_, Frame::Error(e))) => assert_eq!(e.code, "too-many-connections", "{e:?}"),
        r => panic!("a third connection: {:?}", r.map(|(_, f)| f)),
    }
    stream(&a, 3);
    drop((a, b));
    for t in slow {
        let took = t.join().unwrap();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(15),
            "a trickling handshake lasted {took:?} (timeout 3s)"
        );
    }

    drop(srv);
    let srv = serve_with(&store, &["--handshake-timeout", "60s"]);
    let first = TcpStream::connect(&srv.addr).unwrap();
    first.set_read_timeout(Some(T)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _others: Vec<_> = (0..64)
        .map(|_| TcpStream::connect(&srv.addr).unwrap())
        .collect();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut &first, &mut buf);
    assert!(
        matches!(n, Ok(0)) || n.is_err() && start.elapsed() < Duration::from_secs(20),
        "the oldest handshake was not ended: {n:?} after {:?}",
        start.elapsed()
    );
    let (_c, w) = say_hello(&srv.addr, &alice, "va").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
}

/// A volume name given at enrolment is that client's before its first
/// stream; a volume from before owners is nobody's to take by HELLO until
/// `claim` gives it; neither takes another client's volume.
#[test]
fn volumes_belong_to_whom_enrolment_or_claim_gives_them() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let alice = enroll_with(&store, "alice", &["--volume", "db1"]);
    let bob = enroll(&store, "bob");
    let forbidden = |r| refused(r, "forbidden");
    let srv = serve(&store);
    assert!(forbidden(say_hello(&srv.addr, &bob, "db1")));
    let (l, w) = say_hello(&srv.addr, &alice, "db1").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    drop(l);
    // A volume from before owners: bob's stream, its owner file gone.
    let (l, _) = say_hello(&srv.addr, &bob, "old").unwrap();
    stream(&l, 2);
    drop((l, srv));
    std::fs::remove_file(store.join("owners/old")).unwrap();
    let srv = serve(&store);
    assert!(forbidden(say_hello(&srv.addr, &alice, "old")));
    assert!(forbidden(say_hello(&srv.addr, &bob, "old")));
    let out = cli(&["claim", "--store", s, "--volume", "old", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_l, w) = say_hello(&srv.addr, &bob, "old").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    assert!(forbidden(say_hello(&srv.addr, &alice, "old")));
    let out = cli(&["claim", "--store", s, "--volume", "old", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to client bob"));
    let out = cli(&["enroll", "--store", s, "carol", "--volume", "db1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to client alice"));
}

/// Limits set at enrolment: a volume over `--max-volumes` is refused
/// (`over-quota`, however many HELLOs come) and creates nothing; records
/// past `--max-bytes` are neither stored nor acknowledged (the client keeps
/// them); another client goes on throughout.
#[test]
fn a_client_at_its_limits_gets_no_more_and_others_go_on() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let alice = enroll_with(
        &store,
        "alice",
        &["--max-volumes", "2", "--max-bytes", "64K"],
    );
    let bob = enroll(&store, "bob");
    let srv = serve(&store);
    let over = |r| refused(r, "over-quota");
    let (a1, _) = say_hello(&srv.addr, &alice, "a1").unwrap();
    let (_a2, w) = say_hello(&srv.addr, &alice, "a2").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    for i in 0..50 {
        assert!(over(say_hello(&srv.addr, &alice, &format!("junk{i}"))));
    }
    let (b1, w) = say_hello(&srv.addr, &bob, "b1").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    assert!(!store.join("volumes/junk0").exists());

    stream(&a1, 3);
    assert_eq!(durable_seq(&store, "a1"), 4);
    // 200 writes of 512 bytes: over the 64 KiB left.
    let recs = writes(5..205);
    write_records_frame(&mut &a1, &[&recs]).unwrap();
    match read_frame(&mut &a1) {
        Ok(Frame::Error(e)) => assert_eq!(e.code, "over-quota", "{e:?}"),
        r => panic!("records past the limit: {r:?}"),
    }
    assert_eq!(
        durable_seq(&store, "a1"),
        4,
        "records past the limit were stored"
    );
    stream(&b1, 10);
    assert_eq!(durable_seq(&store, "b1"), 11);
    let out = cli(&["status", "--store", s]);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("client alice owns 2 volumes, its limit"),
        "{warned}"
    );
}

/// Two streams of one client at once draw on one byte budget: each alone
/// fits in `--max-bytes`, together they do not, and the second is refused
/// without storing anything.
#[test]
fn streams_of_one_client_share_its_byte_limit() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let alice = enroll_with(&store, "alice", &["--max-bytes", "64K"]);
    let srv = serve(&store);
    let (a1, _) = say_hello(&srv.addr, &alice, "a1").unwrap();
    let (a2, w) = say_hello(&srv.addr, &alice, "a2").unwrap();
    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
    // 80 writes of 512 bytes and a flush: about 45 KiB of records each.
    stream(&a1, 80);
    assert_eq!(durable_seq(&store, "a1"), 81);
    let mut recs = writes(1..81);
    append_record(&mut recs, RTB_OP_FLUSH, 0, 81, 0, 0, 81, &[]);
    write_records_frame(&mut &a2, &[&recs]).unwrap();
    match read_frame(&mut &a2) {
        Ok(Frame::Error(e)) => assert_eq!(e.code, "over-quota", "{e:?}"),
        r => panic!("a second stream passed the client's limit: {r:?}"),
    }
    assert_eq!(
        durable_seq(&store, "a2"),
        0,
        "records past the limit were stored"
    );
}

/// A server started with umask 000 still makes every file of its store
/// its own alone: volumes, journals, index, owners (0600 files, 0700
/// directories).
#[test]
fn store_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    let umask000 = |args: &str| {
        let o = Command::new("sh")
            .args(["-c", &format!("umask 000; exec {BIN} {args}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    umask000(&format!("init --store {s}"));
    let alice: Credentials =
        serde_json::from_slice(&umask000(&format!("enroll --store {s} alice"))).unwrap();
    let srv = serve_after(&store, "umask 000");
    let (l, _) = say_hello(&srv.addr, &alice, "v1").unwrap();
    stream(&l, 5);
    drop((l, srv));
    let mut seen = 0;
    let root = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
    assert_eq!(root & 0o077, 0, "the store has mode {root:o}");
    let mut dirs = vec![store.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", e.path().display());
            seen += 1;
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    assert!(seen >= 10, "only {seen} files in the store");
    assert!(store.join("server.lock").exists() && store.join("pki/ca.key").exists());
}

/// Revoking a client ends its live sessions within seconds: the stream
/// in progress is cut and gets no more acknowledgements, and it cannot
/// connect again; another client's session goes on.
#[test]
fn revocation_ends_live_sessions() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let alice = enroll(&store, "alice");
    let bob = enroll(&store, "bob");
    let srv = serve(&store);
    let (la, _) = say_hello(&srv.addr, &alice, "va").unwrap();
    stream(&la, 3);
    let (lb, _) = say_hello(&srv.addr, &bob, "vb").unwrap();
    stream(&lb, 3);
    let start = std::time::Instant::now();
    assert!(cli(&["revoke", "--store", s, "alice"]).status.success());
    la.tcp()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let r = read_frame(&mut &la);
    assert!(
        r.is_err(),
        "a revoked client's session still answered: {r:?}"
    );
    // Checked every 2 s: under 5 s, with the `revoke` command's own time.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "ended only after {:?}",
        start.elapsed()
    );
    assert!(say_hello(&srv.addr, &alice, "va").is_err());
    // Bob streams on: records 5 and 6 after the first four.
    let mut recs = Vec::new();
    append_record(&mut recs, RTB_OP_WRITE, 0, 5, 0, 512, 5, &[5; 512]);
    append_record(&mut recs, RTB_OP_FLUSH, 0, 6, 0, 0, 6, &[]);
    write_records_frame(&mut &lb, &[&recs]).unwrap();
    loop {
        match read_frame(&mut &lb).unwrap() {
            Frame::Ack(6) => break,
            Frame::Ack(_) => {}
            f => panic!("{f:?}"),
        }
    }
}

/// Enrolls `client` (`--admin` too if `admin`) with its PEM files in
/// `dir`, as qemu's tls-creds-x509 takes them.
fn enroll_pem(store: &Path, client: &str, dir: &Path, admin: bool) -> Credentials {
    let d = dir.to_str().unwrap();
    let admin: &[&str] = if admin { &["--admin"] } else { &[] };
    enroll_with(store, client, &[&["--pem-dir", d], admin].concat())
}

/// `qemu-img convert` of NBD export `export` at `addr` into `out`, with
/// the PEM files in `pem` (TLS) or none (plaintext): its stderr if it
/// fails.
fn qemu_img_nbd(addr: &str, export: &str, pem: Option<&Path>, out: &Path) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut opts = format!("driver=nbd,host={host},port={port},export={export}");
    let mut cmd = Command::new("qemu-img");
    cmd.arg("convert").arg("-O").arg("raw");
    if let Some(dir) = pem {
        cmd.arg("--object").arg(format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ));
        opts.push_str(",tls-creds=tls0,tls-hostname=rtbackup-server");
    }
    let o = cmd.arg("--image-opts").arg(opts).arg(out).output().unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A revoked certificate's NBD connection is ended within seconds: qemu-io
/// holds one open, reads through it, and after `revoke` reads no more.
#[test]
fn revocation_ends_nbd_connections() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let pem = d.path().join("alice");
    let alice = enroll_pem(&store, "alice", &pem, false);
    let (srv, lines) = serve_lines(&store, &["--nbd-listen", "127.0.0.1:0"], 2);
    let nbd = lines[1].strip_prefix("nbd on ").unwrap().to_owned();
    let (la, _) = say_hello(&srv.addr, &alice, "va").unwrap();
    stream(&la, 3);
    let (host, port) = nbd.rsplit_once(':').unwrap();
    let mut io = Command::new("qemu-io")
        .arg("-r")
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            pem.display()
        ))
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,host={host},port={port},export=va,tls-creds=tls0,\
             tls-hostname=rtbackup-server"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = io.stdin.take().unwrap();
    let mut out = BufReader::new(io.stdout.take().unwrap());
    writeln!(stdin, "read 0 512").unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let o = io.wait_with_output().unwrap();
            panic!("qemu-io ended: {}", String::from_utf8_lossy(&o.stderr));
        }
        if line.contains("read 512/512 bytes") {
            break;
        }
    }
    let start = std::time::Instant::now();
    assert!(cli(&["revoke", "--store", s, "alice"]).status.success());
    // Checked every 2 s: cut off within 4 s.
    std::thread::sleep(Duration::from_secs(4));
    writeln!(stdin, "read 0 512").unwrap();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let o = io.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let all = format!("{rest}{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !all.contains("read 512/512 bytes"),
        "a revoked certificate read on: {all}"
    );
    assert!(all.contains("read failed"), "{all}");
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(srv);
}

/// The NBD export is off unless asked for; then it speaks only TLS with a
/// registered certificate of the store's CA, a client reads only its own
/// volumes (another's is refused as if it did not exist) and an
/// administrator's certificate reads them all; what qemu-img reads is
/// byte-identical to a restore.
#[test]
fn nbd_needs_tls_and_gives_each_client_its_own_volumes() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let alice = enroll_pem(&store, "alice", &d.path().join("alice"), false);
    let bob = enroll_pem(&store, "bob", &d.path().join("bob"), false);
    enroll_pem(&store, "root", &d.path().join("root"), true);
    let mallory = d.path().join("mallory");
    enroll_pem(&store, "mallory", &mallory, false);
    assert!(cli(&["revoke", "--store", s, "mallory"]).status.success());

    // Off by default: the server prints no NBD address.
    let (srv, lines) = serve_lines(&store, &[], 1);
    let (la, _) = say_hello(&srv.addr, &alice, "va").unwrap();
    stream(&la, 3);
    let (lb, _) = say_hello(&srv.addr, &bob, "vb").unwrap();
    stream(&lb, 5);
    // Nothing listens on NBD's port, where --nbd-listen would put it.
    assert!(
        TcpStream::connect("127.0.0.1:10809").is_err(),
        "an NBD port is open by default: {lines:?}"
    );
    drop((la, lb, srv));

    let (srv, lines) = serve_lines(&store, &["--nbd-listen", "127.0.0.1:0"], 2);
    let nbd = lines[1].strip_prefix("nbd on ").unwrap().to_owned();
    let restored = |vol: &str| {
        let out = d.path().join(format!("{vol}.restored"));
        let o = cli(&[
            "restore",
            "--store",
            s,
            "--volume",
            vol,
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    let read = |export: &str, pem: Option<&Path>| {
        let out = d.path().join("nbd.img");
        let _ = std::fs::remove_file(&out);
        qemu_img_nbd(&nbd, export, pem, &out).map(|()| std::fs::read(&out).unwrap())
    };
    let alice_pem = d.path().join("alice");
    assert!(read("va", Some(&alice_pem)).unwrap() == restored("va"));
    let e = read("vb", Some(&alice_pem)).unwrap_err();
    assert!(
        e.contains("no volume vb that this certificate may read"),
        "{e}"
    );
    let e = read("nothere", Some(&alice_pem)).unwrap_err();
    assert!(
        e.contains("no volume nothere that this certificate may read"),
        "{e}"
    );
    assert!(read("vb", Some(&d.path().join("bob"))).unwrap() == restored("vb"));
    assert!(read("va@latest", Some(&d.path().join("root"))).unwrap() == restored("va"));
    assert!(read("vb", Some(&d.path().join("root"))).unwrap() == restored("vb"));
    // Plaintext, or a revoked certificate: nothing.
    assert!(read("va", None).is_err());
    assert!(read("va", Some(&mallory)).is_err());
    drop(srv);

    // The roles show in `clients`.
    let o = cli(&["clients", "--store", s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let admin_of = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["client"] == n)
            .unwrap()["admin"]
            .clone()
    };
    assert_eq!(admin_of("root"), true);
    assert_eq!(admin_of("alice"), false);
    assert_eq!(admin_of("mallory"), false);
    let _ = alice;
}

#[test]
fn no_plaintext_unless_asked_and_only_on_loopback() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    let out = cli(&["serve", "--store", s, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rtbackup-server init"));
    let out = cli(&[
        "serve",
        "--store",
        s,
        "--listen",
        "0.0.0.0:0",
        "--insecure-loopback-only",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[test]
fn clients_use_only_their_own_volumes_and_revoked_ones_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    assert!(
        !cli(&["init", "--store", s]).status.success(),
        "a second init"
    );
    let alice = enroll(&store, "alice");
    let bob = enroll(&store, "bob");
    let srv = serve(&store);

    // Alice creates her volume and streams to it.
    let (link, f) = say_hello(&srv.addr, &alice, "va").unwrap();
    assert!(matches!(f, Frame::Welcome(_)), "{f:?}");
    stream(&link, 20);
    drop(link);
    assert_eq!(durable_seq(&store, "va"), 21);

    // Bob may neither stream to it nor read its checksums.
    let (_, f) = say_hello(&srv.addr, &bob, "va").unwrap();
    match f {
        Frame::Error(e) => assert_eq!(e.code, "forbidden", "{e:?}"),
        f => panic!("bob was let in: {f:?}"),
    }
    let e = verify_as(&srv.addr, &bob, "va").unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");
    // A volume nobody owns yet cannot be probed either.
    let e = verify_as(&srv.addr, &bob, "nothing-here").unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");
    // Bob's own volume works; alice's is unchanged.
    let (link, f) = say_hello(&srv.addr, &bob, "vb").unwrap();
    assert!(matches!(f, Frame::Welcome(_)), "{f:?}");
    stream(&link, 3);
    drop(link);
    assert_eq!(durable_seq(&store, "va"), 21);
    let p = verify_as(&srv.addr, &alice, "va").unwrap();
    assert_eq!(p.seq, 21);

    // Plaintext gets nothing from a TLS server.
    let mut tcp = TcpStream::connect(&srv.addr).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    write_frame(&mut tcp, &hello("va")).unwrap();
    assert!(
        read_frame(&mut tcp).is_err(),
        "a plaintext client got an answer"
    );
    // Plaintext clients refuse a remote server without credentials.
    assert!(rtbackup_proto::client::connect("192.0.2.1:7420", None).is_err());

    // `clients` shows who owns what.
    let out = cli(&["clients", "--store", s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["client"], "alice");
    assert_eq!(v[0]["volumes"], serde_json::json!(["va"]));
    assert_eq!(v[1]["volumes"], serde_json::json!(["vb"]));

    // Revoked: alice's certificate no longer opens anything.
    assert!(cli(&["revoke", "--store", s, "alice"]).status.success());
    assert!(
        say_hello(&srv.addr, &alice, "va").is_err(),
        "a revoked client got in"
    );
    assert!(!cli(&["revoke", "--store", s, "nobody"]).status.success());
    assert_eq!(durable_seq(&store, "va"), 21);
}

#[test]
fn enroll_writes_a_private_bundle() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("s");
    let s = s.to_str().unwrap();
    let out = cli(&["enroll", "--store", s, "x"]);
    assert!(!out.status.success(), "enroll before init");
    assert!(cli(&["init", "--store", s]).status.success());
    let f = d.path().join("x.json");
    let f = f.to_str().unwrap();
    assert!(cli(&["enroll", "--store", s, "x", "--output", f])
        .status
        .success());
    assert_eq!(
        std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(Credentials::load(Path::new(f)).unwrap().client, "x");
    assert!(
        !cli(&["enroll", "--store", s, "x", "--output", f])
            .status
            .success(),
        "overwrote"
    );
    assert!(!cli(&["enroll", "--store", s, "../evil"]).status.success());
    // Not to a terminal (script(1) gives it one): no private key shown.
    let shown = Command::new("script")
        .args(["-qec", &format!("{BIN} enroll --store {s} y"), "/dev/null"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("not printed to a terminal"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    // PEM files for qemu and nbd-client: a private directory.
    let pem = d.path().join("pem");
    let out = cli(&[
        "enroll",
        "--store",
        s,
        "z",
        "--pem-dir",
        pem.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pem), 0o700);
    assert_eq!(mode(&pem.join("client-key.pem")), 0o600);
    let key = std::fs::read_to_string(pem.join("client-key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    for f in ["ca-cert.pem", "client-cert.pem"] {
        assert!(std::fs::read_to_string(pem.join(f))
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
    }
}

/// `serve --config FILE` (the unit's way), the command line over it, and
/// the metrics endpoint during a stream.
#[test]
fn settings_file_and_metrics() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let creds = enroll(&store, "host-a");
    // A certificate that ends in 10 days: warned about 30 days ahead.
    let out = cli(&["enroll", "--store", s, "soon", "--days", "10"]);
    assert!(out.status.success());
    let config = d.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"{s}\"\nlisten = \"127.0.0.1:0\"\nkeep = \"forever\"\n\
             nbd-listen = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    // The command line overrides the file: no NBD export.
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--nbd-listen", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lines.push(line.trim().to_owned());
    }
    let server = Server {
        child,
        addr: lines[0].strip_prefix("listening on ").unwrap().to_owned(),
    };
    let metrics = lines[1]
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_owned();
    let scrape = || {
        use std::io::{Read, Write};
        let mut c = TcpStream::connect(&metrics).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(c, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).unwrap();
        body
    };
    let out = cli(&["status", "--store", s]);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("certificate of client soon expires in 9 days"),
        "{warned}"
    );
    assert!(!warned.contains("host-a"), "{warned}");
    let m = scrape();
    assert!(m.contains("\nrtbackup_server_connections 0\n"), "{m}");
    assert!(
        m.contains("\nrtbackup_server_client_certificates_expiring 1\n"),
        "{m}"
    );
    assert!(
        m.contains("\nrtbackup_server_client_certificate_expiry_seconds{client=\"soon\","),
        "{m}"
    );
    assert!(m.contains("\nrtbackup_server_volumes 0\n"), "{m}");

    let (link, f) = say_hello(&server.addr, &creds, "v1").unwrap();
    assert!(matches!(f, Frame::Welcome(_)), "{f:?}");
    stream(&link, 5);
    let m = scrape();
    assert!(m.contains("\nrtbackup_server_connections 1\n"), "{m}");
    assert!(m.contains("\nrtbackup_server_volumes 1\n"), "{m}");
    assert!(
        m.contains("\nrtbackup_server_received_records_total{volume=\"v1\"} 6\n"),
        "{m}"
    );
    assert!(
        m.contains("\nrtbackup_server_durable_seq{volume=\"v1\"} 6\n"),
        "{m}"
    );
    // The newest point comes from the history index, which the server
    // brings up right after the commit: soon, not necessarily by the ACK.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut m = m;
    while !m.contains("\nrtbackup_server_last_point_seq{volume=\"v1\"} 6\n") {
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(100));
        m = scrape();
    }
    assert!(
        m.contains("\nrtbackup_server_journal_bytes{volume=\"v1\"} "),
        "{m}"
    );
    // A scrape never waits on the volume lock (held by a restore or a
    // fold) nor walks the journal.
    let f = std::fs::File::open(store.join("volumes/v1/lock")).unwrap();
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let start = std::time::Instant::now();
    let m = scrape();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        m.contains("\nrtbackup_server_durable_seq{volume=\"v1\"} 6\n"),
        "{m}"
    );
    drop(held);
    drop(link);
    drop(server);

    // A restore on a terminal shows a bar with rate and time left (script(1)
    // gives it a pseudo-terminal); without one, a plain progress line.
    let img = d.path().join("v1.img");
    let restore = format!(
        "{BIN} restore --store {s} --volume v1 --output {}",
        img.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &restore, "/dev/null"])
        .output()
        .unwrap();
    assert!(tty.status.success(), "{tty:?}");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(
        shown.contains("restore v1 [") && shown.contains("/s, ") && shown.contains(" left"),
        "no progress bar on a terminal: {shown:?}"
    );
    let out = Command::new(BIN)
        .args(["restore", "--store", s, "--volume", "v1", "--output"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("restore v1: 1.0 MiB of 1.0 MiB (100%)"),
        "no progress line: {err}"
    );

    // A setting that is no option is a usage error that names it.
    std::fs::write(&config, format!("store = \"{s}\"\nlisen = \"x\"\n")).unwrap();
    let out = cli(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting `lisen`"), "{err}");
    // A value the option refuses is refused as on the command line.
    std::fs::write(&config, format!("store = \"{s}\"\nsegment-mib = 0\n")).unwrap();
    let out = cli(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--segment-mib"), "{err}");
}

/// The soak test of issue 16: 64 volumes from 8 clients at once, one of
/// them hostile. Mallory holds handshakes open (slowloris), asks for 40
/// junk volumes (over its limit), announces a frame of 1 GiB, and streams
/// into its one volume with times of 1970; meanwhile 7 clients stream 9
/// volumes each, and every one of their 63 volumes restores
/// byte-identical to what its client wrote.
#[test]
fn soak_64_volumes_from_8_clients_one_hostile() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let honest: Vec<Credentials> = (0..7).map(|c| enroll(&store, &format!("c{c}"))).collect();
    let mallory = enroll_with(&store, "mallory", &["--max-volumes", "1"]);
    let srv = serve(&store);
    const WRITES: u64 = 40;
    // The image volume `v` of client `c` holds: write `i` (seq i + 1) puts
    // 512 bytes of (c, v, i) at sector 8 * i + v.
    let data = |c: u64, v: u64, i: u64| [(c * 16 + v + i) as u8; 512];
    let expected = |c: u64, v: u64| {
        let mut img = vec![0u8; SIZE as usize];
        for i in 0..WRITES {
            let at = ((8 * i + v) * 512) as usize;
            img[at..at + 512].copy_from_slice(&data(c, v, i));
        }
        img
    };

    std::thread::scope(|sc| {
        // Mallory.
        let addr = srv.addr.as_str();
        let lorises: Vec<_> = (0..4).map(|_| slowloris(addr)).collect();
        let hostile = sc.spawn(|| {
            let (m, w) = say_hello(addr, &mallory, "m0").unwrap();
            assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
            // Its own volume, with times of 1970.
            let mut recs = Vec::new();
            for seq in 1..=20 {
                append_record(&mut recs, RTB_OP_WRITE, 0, seq, seq * 8, 512, 1, &[9; 512]);
            }
            append_record(&mut recs, RTB_OP_FLUSH, 0, 21, 0, 0, 1, &[]);
            write_records_frame(&mut &m, &[&recs]).unwrap();
            for i in 0..40 {
                assert!(
                    refused(say_hello(addr, &mallory, &format!("junk{i}")), "over-quota"),
                    "junk volume {i} was not refused"
                );
            }
            // A RECORDS frame header announcing 1 GiB.
            let (big, _) = say_hello(addr, &mallory, "m0").unwrap_or_else(|e| panic!("{e}"));
            let mut h = Vec::new();
            h.extend_from_slice(b"RTBW");
            h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            h.extend_from_slice(&3u16.to_le_bytes());
            h.extend_from_slice(&(1u32 << 30).to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes());
            let _ = (&big).write_all(&h);
            let r = read_frame(&mut &big);
            assert!(
                matches!(r, Ok(Frame::Error(_)) | Err(_)),
                "a frame of 1 GiB was taken: {r:?}"
            );
        });
        // The honest clients.
        let streams: Vec<_> = honest
            .iter()
            .enumerate()
            .flat_map(|(c, creds)| (0..9u64).map(move |v| (c as u64, v, creds)))
            .map(|(c, v, creds)| {
                sc.spawn(move || {
                    let (l, w) = say_hello(addr, creds, &format!("c{c}v{v}")).unwrap();
                    assert!(matches!(w, Frame::Welcome(_)), "{w:?}");
                    // In four frames of whole records, as an agent sends
                    // batches; the flush last.
                    let mut frames = vec![Vec::new(); 4];
                    for i in 0..WRITES {
                        let seq = i + 1;
                        append_record(
                            &mut frames[(4 * i / WRITES) as usize],
                            RTB_OP_WRITE,
                            0,
                            seq,
                            8 * i + v,
                            512,
                            seq,
                            &data(c, v, i),
                        );
                    }
                    let last = &mut frames[3];
                    append_record(last, RTB_OP_FLUSH, 0, WRITES + 1, 0, 0, WRITES + 1, &[]);
                    for f in &frames {
                        write_records_frame(&mut &l, &[f]).unwrap();
                    }
                    loop {
                        match read_frame(&mut &l).unwrap() {
                            Frame::Ack(a) if a == WRITES + 1 => return,
                            Frame::Ack(_) => {}
                            f => panic!("c{c}v{v}: {f:?}"),
                        }
                    }
                })
            })
            .collect();
        for t in streams {
            t.join().unwrap();
        }
        hostile.join().unwrap();
        for l in lorises {
            let held = l.join().unwrap();
            assert!(
                held < Duration::from_secs(30),
                "a slowloris held on {held:?}"
            );
        }
    });

    for c in 0..7u64 {
        for v in 0..9u64 {
            let vol = format!("c{c}v{v}");
            let out = d.path().join(format!("{vol}.img"));
            let o = cli(&[
                "restore",
                "--store",
                s,
                "--volume",
                &vol,
                "--output",
                out.to_str().unwrap(),
            ]);
            assert!(
                o.status.success(),
                "{vol}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                std::fs::read(&out).unwrap() == expected(c, v),
                "{vol} differs"
            );
        }
    }
    drop(srv);
}

/// The NBD listener serves at most 32 connections at once (the 33rd is
/// closed without a greeting), and one that never starts TLS is closed
/// when its 10 s for the plaintext phase are up.
#[test]
fn nbd_connections_are_capped_and_plaintext_is_cut_off() {
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let (srv, lines) = serve_lines(&store, &["--nbd-listen", "127.0.0.1:0"], 2);
    let nbd = lines[1].strip_prefix("nbd on ").unwrap().to_owned();
    let start = std::time::Instant::now();
    let mut held: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut c = TcpStream::connect(&nbd).unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            let mut greeting = [0u8; 18];
            c.read_exact(&mut greeting).unwrap();
            assert_eq!(&greeting[..8], b"NBDMAGIC");
            c
        })
        .collect();
    let mut extra = TcpStream::connect(&nbd).unwrap();
    extra.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 18];
    assert_eq!(
        extra.read(&mut b).unwrap_or(0),
        0,
        "a 33rd connection was greeted"
    );
    for c in &mut held {
        assert_eq!(
            c.read(&mut b).unwrap_or(0),
            0,
            "a silent connection got an answer"
        );
    }
    let held_for = start.elapsed();
    assert!(
        held_for >= Duration::from_secs(9) && held_for < Duration::from_secs(20),
        "silent connections were cut off after {held_for:?}, not 10 s"
    );
    drop(srv);
}

/// The server raises its soft limit of open files to the hard one at start
/// (every open volume holds about 7 descriptors): started with a soft
/// limit of 64, it runs with its hard limit (this test's).
#[test]
fn serve_raises_its_open_files_limit() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let s = store.to_str().unwrap();
    assert!(cli(&["init", "--store", s]).status.success());
    let srv = serve_after(&store, "ulimit -Sn 64");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.child.id())).unwrap();
    drop(srv);
    let nofile = |limits: &str| -> Vec<String> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"));
        let words = line.unwrap().split_whitespace().skip(3).take(2);
        words.map(str::to_owned).collect()
    };
    let hard = nofile(&std::fs::read_to_string("/proc/self/limits").unwrap())[1].clone();
    assert_ne!(hard, "64", "the test needs a hard limit above 64");
    assert_eq!(nofile(&limits), [hard.clone(), hard], "{limits}");
}
