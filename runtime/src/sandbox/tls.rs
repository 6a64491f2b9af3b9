//! TLS for plugins, in the host (`wasi:tls`, wasmtime-wasi-tls with rustls): a plugin opens a
//! TCP connection to a granted address as usual and hands its streams to `client-handshake`;
//! the host verifies the server and encrypts, the plugin reads and writes plain bytes.
//!
//! Why in the host: the CA bundle, the client certificate and above all its private key never
//! enter the sandbox (a plugin that is compromised cannot read the key it authenticates with);
//! the cryptography runs natively (AES-NI), not interpreted in Wasm; and one implementation,
//! audited once, serves every connector in every language.
//!
//! What a plugin gets is set by its `grants.tls` (paths relative to the pipeline file):
//! `ca` replaces the system's roots with the certificates of that PEM file; `cert` and `key`
//! (PEM, together) are the client identity presented to servers that ask for one (mutual
//! TLS). Without `grants.tls`, servers are verified against the system's roots
//! (`rustls-native-certs`) and no client certificate is sent. The server name is the one the
//! plugin passes (SNI and the name verified; an IP address is verified against the
//! certificate's IP entries); the TCP grant still decides which addresses it may reach.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use wasmtime_wasi_tls::{TlsProvider, TlsStream, TlsTransport};

/// A checked `grants.tls`: the client configuration its files make.
#[derive(Clone)]
pub struct TlsGrant {
    /// The CA file, when the system's roots are replaced.
    pub ca: Option<PathBuf>,
    /// The client certificate, when one is presented.
    pub cert: Option<PathBuf>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsGrant")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Which field of `grants.tls` a problem is in, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    Ca(String),
    Cert(String),
    Key(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's root certificates, read once (those it cannot parse are skipped).
static SYSTEM_ROOTS: LazyLock<Arc<rustls::RootCertStore>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    Arc::new(roots)
});

/// The client configuration of a plugin without `grants.tls`.
static DEFAULT: LazyLock<Option<Arc<rustls::ClientConfig>>> = LazyLock::new(|| {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| {
            Arc::new(
                b.with_root_certificates(SYSTEM_ROOTS.clone())
                    .with_no_client_auth(),
            )
        })
});

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {what} `{}`: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{what} `{}` is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} `{}` holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

impl TlsGrant {
    /// Load the files (already resolved against the pipeline file) and build the client
    /// configuration; each problem names the field to fix.
    pub fn load(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<TlsGrant, TlsProblem> {
        let roots = match &ca {
            None => SYSTEM_ROOTS.clone(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(path, "CA file").map_err(TlsProblem::Ca)? {
                    roots.add(c).map_err(|e| {
                        TlsProblem::Ca(format!(
                            "CA file `{}`: a certificate is not usable as a root: {e}",
                            path.display()
                        ))
                    })?;
                }
                Arc::new(roots)
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsProblem::Ca(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&cert, key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(TlsProblem::Cert(
                    "a client certificate needs its private key: add `key`".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(TlsProblem::Key(
                    "a private key needs its certificate: add `cert`".into(),
                ));
            }
            (Some(cert_path), Some(key_path)) => {
                let chain = read_certs(cert_path, "certificate").map_err(TlsProblem::Cert)?;
                let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                    TlsProblem::Key(format!(
                        "cannot read a private key (PEM) from `{}`: {e}",
                        key_path.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    TlsProblem::Key(format!(
                        "the key `{}` does not go with the certificate `{}`: {e}",
                        key_path.display(),
                        cert_path.display()
                    ))
                })?
            }
        };
        Ok(TlsGrant {
            ca,
            cert,
            config: Arc::new(config),
        })
    }
}

/// The client configuration for a plugin: its grant's, or (without `grants.tls`) the system
/// roots', read at the first TLS connection any plugin makes, not before.
pub fn client_config(
    grant: Option<&Arc<rustls::ClientConfig>>,
) -> Option<Arc<rustls::ClientConfig>> {
    grant.cloned().or_else(|| DEFAULT.clone())
}

/// The `wasi:tls` provider of one plugin instance.
pub struct Provider {
    /// From `grants.tls`; `None`: the system's roots.
    config: Option<Arc<rustls::ClientConfig>>,
    label: Arc<str>,
}

impl Provider {
    pub fn new(label: &Arc<str>, grant: Option<&TlsGrant>) -> Provider {
        Provider {
            config: grant.map(TlsGrant::config),
            label: label.clone(),
        }
    }
}

impl TlsGrant {
    /// The client configuration its files make.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}

/// Why a handshake failed, and what to do where it is the usual mistake; `true` when it was
/// the server's certificate. Logged with the plugin and the server's name.
pub fn handshake_failure(label: &str, server: &str, e: &std::io::Error) -> (String, bool) {
    let (reason, certificate) = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => (
            "the server's certificate is not signed by a trusted CA (grant the CA that signed \
             it: grants.tls = { ca = \"FILE.pem\" })"
                .to_owned(),
            true,
        ),
        Some(other @ rustls::Error::InvalidCertificate(_)) => (other.to_string(), true),
        Some(other) => (other.to_string(), false),
        None => (e.to_string(), false),
    };
    let message = format!("TLS with {server} failed: {reason}");
    tracing::warn!(plugin = label, "{message}");
    (message, certificate)
}

impl TlsProvider for Provider {
    fn connect(
        &self,
        server_name: String,
        transport: Box<dyn TlsTransport>,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Box<dyn TlsStream>, wasmtime_wasi_tls::Error>> + Send>,
    > {
        let config = client_config(self.config.as_ref());
        let label = self.label.clone();
        Box::pin(async move {
            let config = config.ok_or_else(|| {
                wasmtime_wasi_tls::Error::msg("TLS is not available: no protocol versions")
            })?;
            let name = ServerName::try_from(server_name.clone()).map_err(|_| {
                wasmtime_wasi_tls::Error::msg(format!(
                    "TLS: `{server_name}` is not a host name or IP address"
                ))
            })?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, transport)
                .await
                .map_err(|e| {
                    wasmtime_wasi_tls::Error::msg(handshake_failure(&label, &server_name, &e).0)
                })?;
            Ok(Box::new(Stream(stream)) as Box<dyn TlsStream>)
        })
    }
}

/// tokio-rustls' client stream as wasmtime-wasi-tls' stream (its own impl is behind its
/// `rustls` feature, whose default provider we do not use).
struct Stream(tokio_rustls::client::TlsStream<Box<dyn TlsTransport>>);

impl TlsStream for Stream {}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
