//! The server's certificate authority and client registry, under
//! `STORE/pki`:
//!
//! ```text
//! ca.crt ca.key                 the CA (key mode 0600)
//! server.crt server.key         the server's certificate (name SERVER_NAME)
//! clients/NAME/FINGERPRINT.crt  registered client certificates
//! revoked/NAME/FINGERPRINT.crt  withdrawn ones
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName as TlsDn, RootCertStore, SignatureScheme};
use time::OffsetDateTime;

use crate::{fingerprint, provider, validate_client_name, Credentials, TlsError, SERVER_NAME};

/// The PKI's directory in a store.
pub const PKI_DIR: &str = "pki";

/// Validity of the CA and the server's certificate.
const CA_DAYS: i64 = 20 * 365;

fn file_err(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|e| file_err(path, e))
}

/// Writes a new file (never replacing one) with `mode`, synced.
fn write_new(path: &Path, data: &str, mode: u32) -> Result<(), TlsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(data.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(path, e))
}

fn mkdir(path: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(path).map_err(|e| file_err(path, e))
}

/// A serial number nobody else uses: 16 bytes from a hash of the moment,
/// the process and `salt`, positive.
fn serial(salt: &str) -> SerialNumber {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let h = blake3::hash(format!("{salt}/{now}/{}", std::process::id()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "rtbackup");
    d.push(DnType::CommonName, cn);
    d
}

/// An enrolled client.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Fingerprints of its registered certificates.
    pub certificates: Vec<String>,
    /// Fingerprints of its revoked ones.
    pub revoked: Vec<String>,
    /// Its certificates read every volume over NBD (`enroll --admin`).
    pub admin: bool,
}

/// What a client may hold on the server, set at enrolment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientLimits {
    /// Volumes it may own (a HELLO for one more is refused).
    pub max_volumes: u32,
    /// Bytes of journal (history) its volumes may hold together (`None`:
    /// no limit); past it, nothing more is acknowledged.
    pub max_bytes: Option<u64>,
}

/// Volumes a client may own unless its enrolment says otherwise.
pub const DEFAULT_MAX_VOLUMES: u32 = 16;

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_volumes: DEFAULT_MAX_VOLUMES,
            max_bytes: None,
        }
    }
}

/// The file of a client's limits in its registration.
const LIMITS_FILE: &str = "limits.json";

/// A registered client certificate near or past its end
/// ([`Pki::expiring`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiring {
    /// The client.
    pub client: String,
    /// The certificate's fingerprint.
    pub fingerprint: String,
    /// When it stops being valid.
    pub not_after: SystemTime,
}

/// When the certificate in PEM file `path` stops being valid.
fn not_after(path: &Path) -> Result<SystemTime, TlsError> {
    let pem = read(path)?;
    let bad = |why: String| {
        file_err(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        )
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// The file in a client's registration that makes it an administrator.
const ADMIN_MARK: &str = "admin";

/// The certificate authority and client registry of a store.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Whether `store` has a PKI.
    pub fn exists(store: &Path) -> bool {
        store.join(PKI_DIR).join("ca.crt").is_file()
    }

    /// Creates the CA and the server's certificate of `store`.
    pub fn init(store: &Path) -> Result<Self, TlsError> {
        let dir = store.join(PKI_DIR);
        if Self::exists(store) {
            return Err(TlsError::AlreadyInitialised(store.to_owned()));
        }
        mkdir(&dir.join("clients"))?;
        mkdir(&dir.join("revoked"))?;
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name = dn("rtbackup certificate authority");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.serial_number = Some(serial("ca"));
        ca.not_before = now - time::Duration::hours(1);
        ca.not_after = now + time::Duration::days(CA_DAYS);
        let ca_cert = ca.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        sp.distinguished_name = dn(SERVER_NAME);
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        sp.serial_number = Some(serial("server"));
        sp.not_before = now - time::Duration::hours(1);
        sp.not_after = now + time::Duration::days(CA_DAYS);
        let server_cert = sp.signed_by(&server_key, &ca_cert, &ca_key)?;
        // Keys first: a crash leaves no ca.crt, so init can run again.
        write_new(&dir.join("ca.key"), &ca_key.serialize_pem(), 0o600)?;
        write_new(&dir.join("server.key"), &server_key.serialize_pem(), 0o600)?;
        write_new(&dir.join("server.crt"), &server_cert.pem(), 0o644)?;
        write_new(&dir.join("ca.crt"), &ca_cert.pem(), 0o644)?;
        tracing::info!(store = %store.display(), "certificate authority created");
        Ok(Self { dir })
    }

    /// The PKI of `store`.
    pub fn open(store: &Path) -> Result<Self, TlsError> {
        if !Self::exists(store) {
            return Err(TlsError::NotInitialised(store.to_owned()));
        }
        Ok(Self {
            dir: store.join(PKI_DIR),
        })
    }

    /// Issues and registers a certificate for client `name`, valid for
    /// `days` from now.
    pub fn enroll(&self, name: &str, days: u32) -> Result<Credentials, TlsError> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            name,
            now - time::Duration::minutes(5),
            now + time::Duration::days(i64::from(days)),
        )
    }

    /// Issues and registers a certificate for client `name` valid from
    /// `not_before` to `not_after` (tests make expired ones with it).
    pub fn issue(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Credentials, TlsError> {
        validate_client_name(name)?;
        let ca_pem = read(&self.dir.join("ca.crt"))?;
        let ca_key = KeyPair::from_pem(&read(&self.dir.join("ca.key"))?)?;
        // The issuer, rebuilt from the CA's certificate and key: same
        // subject, same key, so what it signs chains to ca.crt.
        let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn(name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(serial(name));
        p.not_before = not_before;
        p.not_after = not_after;
        let cert = p.signed_by(&key, &issuer, &ca_key)?;
        let dir = self.dir.join("clients").join(name);
        mkdir(&dir)?;
        let fp = fingerprint(cert.der());
        write_new(&dir.join(format!("{fp}.crt")), &cert.pem(), 0o644)?;
        tracing::info!(client = name, fingerprint = %fp, "client enrolled");
        Ok(Credentials {
            format: crate::creds::FORMAT.to_owned(),
            client: name.to_owned(),
            ca: ca_pem,
            certificate: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Makes client `name` (enrolled) an administrator: its certificates
    /// read every client's volumes over NBD.
    pub fn make_admin(&self, name: &str) -> Result<(), TlsError> {
        validate_client_name(name)?;
        let dir = self.dir.join("clients").join(name);
        if list_certs(&dir)?.is_empty() {
            return Err(TlsError::NoSuchClient(name.to_owned()));
        }
        let mark = dir.join(ADMIN_MARK);
        if !mark.is_file() {
            write_new(&mark, "", 0o644)?;
        }
        tracing::info!(client = name, "client made an administrator");
        Ok(())
    }

    /// Sets the limits of client `name` (enrolled).
    pub fn set_limits(&self, name: &str, limits: ClientLimits) -> Result<(), TlsError> {
        validate_client_name(name)?;
        let dir = self.dir.join("clients").join(name);
        if list_certs(&dir)?.is_empty() {
            return Err(TlsError::NoSuchClient(name.to_owned()));
        }
        let path = dir.join(LIMITS_FILE);
        let tmp = dir.join(format!(".{LIMITS_FILE}.tmp"));
        let _ = fs::remove_file(&tmp);
        let json = serde_json::to_string_pretty(&limits).unwrap_or_default() + "\n";
        write_new(&tmp, &json, 0o644)?;
        fs::rename(&tmp, &path).map_err(|e| file_err(&path, e))
    }

    /// The limits of client `name`: as set at enrolment, else the
    /// defaults. A damaged limits file is an error, not a lifted limit.
    pub fn limits(&self, name: &str) -> Result<ClientLimits, TlsError> {
        validate_client_name(name)?;
        let path = self.dir.join("clients").join(name).join(LIMITS_FILE);
        match fs::read_to_string(&path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| {
                file_err(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientLimits::default()),
            Err(e) => Err(file_err(&path, e)),
        }
    }

    /// Whether client `name` is an administrator ([`Pki::make_admin`]).
    pub fn is_admin(&self, name: &str) -> bool {
        validate_client_name(name).is_ok()
            && self
                .dir
                .join("clients")
                .join(name)
                .join(ADMIN_MARK)
                .is_file()
    }

    /// Withdraws every certificate of client `name`: the server refuses
    /// them from the next handshake on, and it is no administrator any
    /// more. Returns how many.
    pub fn revoke(&self, name: &str) -> Result<usize, TlsError> {
        validate_client_name(name)?;
        let from = self.dir.join("clients").join(name);
        let certs = list_certs(&from)?;
        if certs.is_empty() {
            return Err(TlsError::NoSuchClient(name.to_owned()));
        }
        let mark = from.join(ADMIN_MARK);
        if mark.exists() {
            fs::remove_file(&mark).map_err(|e| file_err(&mark, e))?;
        }
        let to = self.dir.join("revoked").join(name);
        mkdir(&to)?;
        for fp in &certs {
            let file = format!("{fp}.crt");
            fs::rename(from.join(&file), to.join(&file))
                .map_err(|e| file_err(&from.join(&file), e))?;
        }
        tracing::info!(client = name, certificates = certs.len(), "client revoked");
        Ok(certs.len())
    }

    /// Every client with a registered or revoked certificate.
    pub fn clients(&self) -> Result<Vec<ClientInfo>, TlsError> {
        let mut names = std::collections::BTreeSet::new();
        for sub in ["clients", "revoked"] {
            let d = self.dir.join(sub);
            for e in fs::read_dir(&d).map_err(|e| file_err(&d, e))? {
                let e = e.map_err(|e| file_err(&d, e))?;
                if let Some(n) = e.file_name().to_str() {
                    if validate_client_name(n).is_ok() {
                        names.insert(n.to_owned());
                    }
                }
            }
        }
        names
            .into_iter()
            .map(|name| {
                Ok(ClientInfo {
                    certificates: list_certs(&self.dir.join("clients").join(&name))?,
                    revoked: list_certs(&self.dir.join("revoked").join(&name))?,
                    admin: self.is_admin(&name),
                    name,
                })
            })
            .collect()
    }

    /// The registered client certificates that expire within `within`
    /// (or have expired), soonest first.
    pub fn expiring(&self, within: std::time::Duration) -> Result<Vec<Expiring>, TlsError> {
        let limit = SystemTime::now() + within;
        let mut out = Vec::new();
        for c in self.clients()? {
            for fp in &c.certificates {
                let path = self
                    .dir
                    .join("clients")
                    .join(&c.name)
                    .join(format!("{fp}.crt"));
                let not_after = not_after(&path)?;
                if not_after <= limit {
                    out.push(Expiring {
                        client: c.name.clone(),
                        fingerprint: fp.clone(),
                        not_after,
                    });
                }
            }
        }
        out.sort_by_key(|e| e.not_after);
        Ok(out)
    }

    /// The name of the client whose registered certificate this is.
    pub fn client_of(&self, cert: &[u8]) -> Option<String> {
        let fp = fingerprint(cert);
        let d = self.dir.join("clients");
        let entries = fs::read_dir(&d).ok()?;
        entries.flatten().find_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            e.path().join(format!("{fp}.crt")).is_file().then_some(name)
        })
    }

    /// The server's TLS configuration: TLS 1.3, its certificate, and
    /// client certificates required, chained to the CA and registered.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_for(&[&rustls::version::TLS13])
    }

    /// [`Pki::server_config`] that also takes TLS 1.2 (its ECDHE and AEAD
    /// suites only, rustls's): for the NBD export, whose Linux client
    /// (nbd-client 3.24, GnuTLS) offers nothing newer. The replication
    /// port stays TLS 1.3 only.
    pub fn nbd_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_for(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    fn server_config_for(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let ca = load_cert(&self.dir.join("ca.crt"))?;
        let chain = vec![load_cert(&self.dir.join("server.crt"))?];
        let key = load_key(&self.dir.join("server.key"))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let verifier = Arc::new(Registered {
            inner,
            pki: self.clone(),
        });
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        Ok(Arc::new(cfg))
    }
}

/// Fingerprints of the certificates in a registry directory (none if it
/// does not exist).
fn list_certs(dir: &Path) -> Result<Vec<String>, TlsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_err(dir, e)),
    };
    let mut v: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".crt")
                .map(str::to_owned)
        })
        .collect();
    v.sort();
    Ok(v)
}

pub(crate) fn load_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(read(path)?.as_bytes()).map_err(|e| file_err(path, e))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(read(path)?.as_bytes()).map_err(|e| file_err(path, e))
}

/// The server's client verifier: the WebPKI checks (chain to the CA,
/// validity, key usage), then the registry: a certificate that was never
/// registered or was revoked is refused in the handshake.
#[derive(Debug)]
struct Registered {
    inner: Arc<dyn ClientCertVerifier>,
    pki: Pki,
}

impl ClientCertVerifier for Registered {
    fn root_hint_subjects(&self) -> &[TlsDn] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.pki.client_of(end_entity).is_none() {
            tracing::warn!(
                fingerprint = %fingerprint(end_entity),
                "refused a client certificate that is revoked or was never registered"
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How long before expiry `enroll` certificates last by default.
pub const DEFAULT_CLIENT_DAYS: u32 = 397;
