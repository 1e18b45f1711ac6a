//! A client's credentials bundle: what `rtbackup-server enroll` prints and
//! `--credentials FILE` reads (JSON).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::{provider, TlsError};

/// The `format` of the bundles this version writes and reads.
pub(crate) const FORMAT: &str = "rtbackup-credentials-1";

/// One client's credentials: its name, certificate and key, and the
/// server's CA (the only authority it trusts).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// [`FORMAT`].
    pub format: String,
    /// The client's name (its volumes are its own).
    pub client: String,
    /// The server's CA certificate, PEM.
    pub ca: String,
    /// The client's certificate, PEM.
    pub certificate: String,
    /// The client's private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a bundle. It holds a private key: a file that others can read
    /// is refused.
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        use std::os::unix::fs::PermissionsExt;
        let bad = |what: String| TlsError::BadCredentials {
            path: path.to_owned(),
            what,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        let me = nix::unistd::geteuid().as_raw();
        {
            use std::os::unix::fs::MetadataExt;
            // Its owner may change it, mode included: only this user or root.
            if meta.uid() != me && meta.uid() != 0 {
                return Err(bad(format!(
                    "owned by uid {}, not by this user (uid {me}) or root: whoever owns it \
                     can change it; chown it",
                    meta.uid()
                )));
            }
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o}: the file holds a private key; make it readable by its owner only (chmod 600)",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let c: Credentials = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if c.format != FORMAT {
            return Err(bad(format!("format {:?}, expected {FORMAT:?}", c.format)));
        }
        crate::validate_client_name(&c.client).map_err(|e| bad(e.to_string()))?;
        // Parse everything now, so that a damaged bundle is reported here.
        c.client_config().map_err(|e| bad(e.to_string()))?;
        Ok(c)
    }

    /// The bundle as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The client's TLS configuration: TLS 1.3, this client's
    /// certificate, and only the server's CA as a root.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let pem_err = |what: &str, e: rustls::pki_types::pem::Error| {
            TlsError::Rustls(rustls::Error::General(format!("{what}: {e}")))
        };
        let ca =
            CertificateDer::from_pem_slice(self.ca.as_bytes()).map_err(|e| pem_err("ca", e))?;
        let cert = CertificateDer::from_pem_slice(self.certificate.as_bytes())
            .map_err(|e| pem_err("certificate", e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| pem_err("key", e))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)?;
        Ok(Arc::new(cfg))
    }
}
