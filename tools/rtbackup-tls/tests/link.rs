//! Handshakes between a server and clients over loopback: who is let in,
//! who is refused, and a duplex link under concurrent reads and writes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rtbackup_tls::{accept, connect, Credentials, Link, Peer, Pki, TlsError};
use time::OffsetDateTime;

const T: Duration = Duration::from_secs(10);

/// Runs one server handshake on a fresh listener and one client handshake
/// with `config`; the server's result, and the client's (after it tried to
/// read one byte, where a TLS 1.3 client learns that its certificate was
/// refused).
fn handshake(
    pki: &Pki,
    config: Arc<rustls::ClientConfig>,
) -> (Result<Link, TlsError>, Result<Link, String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server_cfg = pki.server_config().unwrap();
    let pki = pki.clone();
    let server = thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        let r = accept(tcp, server_cfg, &pki, T);
        if let Ok(link) = &r {
            (&*link).write_all(b"!").unwrap();
        }
        r
    });
    let client = connect(TcpStream::connect(addr).unwrap(), config, T)
        .map_err(|e| e.to_string())
        .and_then(|link| {
            let mut b = [0u8; 1];
            (&link).read_exact(&mut b).map_err(|e| e.to_string())?;
            Ok(link)
        });
    (server.join().unwrap(), client)
}

#[test]
fn an_enrolled_client_gets_in_and_the_link_is_duplex() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::init(d.path()).unwrap();
    assert!(matches!(
        Pki::init(d.path()),
        Err(TlsError::AlreadyInitialised(_))
    ));
    let creds = pki.enroll("alice", 30).unwrap();
    let (s, c) = handshake(&pki, creds.client_config().unwrap());
    let (s, c) = (s.unwrap(), c.unwrap());
    assert_eq!(s.peer(), &Peer::Client("alice".into()));
    assert_eq!(s.client_name(), Some("alice"));
    assert_eq!(c.peer(), &Peer::Server);
    // Both ends write 4 MiB while reading the other's 4 MiB, each
    // direction on its own thread.
    let data: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    let (s, c) = (Arc::new(s), Arc::new(c));
    thread::scope(|sc| {
        for (a, b) in [(&s, &c), (&c, &s)] {
            let data = &data;
            sc.spawn(move || {
                for chunk in data.chunks(100_003) {
                    (&**a).write_all(chunk).unwrap();
                }
            });
            sc.spawn(move || {
                let mut got = vec![0u8; data.len()];
                (&**b).read_exact(&mut got).unwrap();
                assert!(got == *data);
            });
        }
    });
}

#[test]
fn strangers_expired_revoked_and_anonymous_clients_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::init(&d.path().join("a")).unwrap();
    let other = Pki::init(&d.path().join("b")).unwrap();

    // A certificate of another server's CA.
    let stranger = other.enroll("mallory", 30).unwrap();
    let (s, c) = handshake(&pki, stranger.client_config().unwrap());
    assert!(s.is_err() && c.is_err(), "a stranger got in");

    // An expired certificate of the right CA.
    let now = OffsetDateTime::now_utc();
    let old = pki
        .issue(
            "old",
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap();
    let (s, c) = handshake(&pki, old.client_config().unwrap());
    assert!(s.is_err() && c.is_err(), "an expired certificate got in");

    // A revoked one.
    let bob = pki.enroll("bob", 30).unwrap();
    let (s, c) = handshake(&pki, bob.client_config().unwrap());
    assert!(s.is_ok() && c.is_ok());
    assert_eq!(pki.revoke("bob").unwrap(), 1);
    let (s, c) = handshake(&pki, bob.client_config().unwrap());
    assert!(s.is_err() && c.is_err(), "a revoked certificate got in");
    assert!(matches!(
        pki.revoke("nobody"),
        Err(TlsError::NoSuchClient(_))
    ));
    let clients = pki.clients().unwrap();
    assert_eq!(
        clients.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["bob", "old"]
    );
    assert!(clients[0].certificates.is_empty() && clients[0].revoked.len() == 1);

    // No certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(bob.ca.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let anon = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (s, c) = handshake(&pki, Arc::new(anon));
    assert!(
        s.is_err() && c.is_err(),
        "a client without a certificate got in"
    );
}

#[test]
fn a_server_of_another_ca_is_not_trusted() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::init(&d.path().join("a")).unwrap();
    let impostor = Pki::init(&d.path().join("b")).unwrap();
    let creds = pki.enroll("alice", 30).unwrap();
    // The impostor knows the client's name and enrolls it too.
    impostor.enroll("alice", 30).unwrap();
    let (_, c) = handshake(&impostor, creds.client_config().unwrap());
    let e = c.unwrap_err();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
}

#[test]
fn credentials_files_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::init(d.path()).unwrap();
    assert!(matches!(
        Pki::open(&d.path().join("none")),
        Err(TlsError::NotInitialised(_))
    ));
    let creds = pki.enroll("alice", 30).unwrap();
    let f = d.path().join("alice.json");
    std::fs::write(&f, creds.to_json()).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Credentials::load(&f).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Credentials::load(&f).unwrap(), creds);
    // Mode 0600 but another user's: that user could change it.
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = Credentials::load(&f).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(&f, Some(0), None).unwrap();
    }
    std::fs::write(
        &f,
        creds
            .to_json()
            .replace("BEGIN CERTIFICATE", "BEGIN NONSENSE"),
    )
    .unwrap();
    assert!(Credentials::load(&f).is_err());
    std::fs::write(&f, "{").unwrap();
    assert!(Credentials::load(&f).is_err());
    assert!(matches!(pki.enroll("../x", 1), Err(TlsError::BadName(_))));
    assert!(matches!(pki.enroll("", 1), Err(TlsError::BadName(_))));
}

/// Replication speaks TLS 1.3 only: an enrolled client that offers only
/// TLS 1.2 gets no connection.
#[test]
fn replication_refuses_tls_1_2() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::init(d.path()).unwrap();
    let creds = pki.enroll("alice", 30).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(creds.ca.as_bytes()).unwrap())
        .unwrap();
    let cert = CertificateDer::from_pem_slice(creds.certificate.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(creds.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    let (s, c) = handshake(&pki, Arc::new(tls12));
    assert!(s.is_err(), "the server accepted TLS 1.2");
    let e = c.unwrap_err();
    assert!(e.to_lowercase().contains("version"), "{e}");
    // The same client with TLS 1.3 gets in.
    let (s, c) = handshake(&pki, creds.client_config().unwrap());
    assert!(s.is_ok() && c.is_ok());
}

/// The NBD export's TLS takes 1.2 as well as 1.3, but of 1.2 only suites
/// with ECDHE key exchange and an AEAD cipher: every TLS 1.2 suite its
/// configuration holds is one.
#[test]
fn nbd_tls_1_2_takes_only_ecdhe_and_aead_suites() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::init(d.path()).unwrap();
    let cfg = pki.nbd_server_config().unwrap();
    let suites: Vec<String> = cfg
        .crypto_provider()
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert!(!suites.is_empty());
    for s in &suites {
        assert!(
            s.contains("_ECDHE_") && (s.contains("_GCM_") || s.contains("CHACHA20_POLY1305")),
            "TLS 1.2 suite {s} is not ECDHE with an AEAD cipher"
        );
    }
}
