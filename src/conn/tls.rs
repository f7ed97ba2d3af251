//! TLS for both kinds of session (normal and walsender), following libpq's
//! `sslmode`: `prefer`/`require` encrypt without checking the certificate
//! (unless a root certificate is configured, then `require` checks the chain
//! like `verify-ca`), `verify-ca` checks the chain, `verify-full` the chain
//! and the host name. Roots come from `sslrootcert` (a PEM file, or `system`
//! for the OS store) or `~/.postgresql/root.crt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::{ConnConfig, SslMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode={0} needs a root certificate: set sslrootcert=/path/to/root.crt (or sslrootcert=system), or put it in {1}")]
    NoRootCert(&'static str, String),
    #[error("cannot read certificate file {0}: {1}")]
    ReadCert(PathBuf, String),
    #[error("no usable certificate in {0}")]
    EmptyCert(PathBuf),
    #[error("cannot read key file {0}: {1}")]
    ReadKey(PathBuf, String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS setup failed: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn home_pg_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql"))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data =
        std::fs::read(path).map_err(|e| TlsError::ReadCert(path.to_path_buf(), e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::ReadCert(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::EmptyCert(path.to_path_buf()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data =
        std::fs::read(path).map_err(|e| TlsError::ReadKey(path.to_path_buf(), e.to_string()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::ReadKey(path.to_path_buf(), e.to_string()))?
        .ok_or_else(|| TlsError::ReadKey(path.to_path_buf(), "no private key found".into()))
}

/// The root store, or `None` when no root certificate is configured.
fn roots(cfg: &ConnConfig) -> Result<Option<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    match cfg.sslrootcert.as_deref() {
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate is skipped, as OpenSSL does.
                let _ = store.add(cert);
            }
            Ok(Some(store))
        }
        Some(path) => {
            for cert in load_certs(Path::new(path))? {
                store.add(cert)?;
            }
            Ok(Some(store))
        }
        None => match home_pg_dir()
            .map(|d| d.join("root.crt"))
            .filter(|p| p.is_file())
        {
            Some(path) => {
                for cert in load_certs(&path)? {
                    store.add(cert)?;
                }
                Ok(Some(store))
            }
            None => Ok(None),
        },
    }
}

/// The rustls client configuration for `cfg`, or `None` for `sslmode=disable`.
pub fn client_config(cfg: &ConnConfig) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if cfg.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let roots = roots(cfg)?;
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match (cfg.sslmode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?
        }
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
        )),
        (mode @ (SslMode::VerifyFull | SslMode::VerifyCa), None) => {
            let default = home_pg_dir()
                .map(|d| d.join("root.crt").display().to_string())
                .unwrap_or_else(|| "~/.postgresql/root.crt".into());
            return Err(TlsError::NoRootCert(mode.as_str(), default));
        }
        _ => Arc::new(NoVerification(provider())),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cert = cfg.sslcert.clone().or_else(|| {
        home_pg_dir()
            .map(|d| d.join("postgresql.crt"))
            .filter(|p| p.is_file())
    });
    let config = match cert {
        Some(cert_path) => {
            let key_path = cfg
                .sslkey
                .clone()
                .or_else(|| home_pg_dir().map(|d| d.join("postgresql.key")))
                .unwrap_or_else(|| cert_path.with_extension("key"));
            builder.with_client_auth_cert(load_certs(&cert_path)?, load_key(&key_path)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The name the certificate is checked against (and sent as SNI).
pub fn server_name(cfg: &ConnConfig) -> Option<ServerName<'static>> {
    match &cfg.host {
        super::config::Host::Tcp(h) => ServerName::try_from(h.clone()).ok(),
        super::config::Host::Unix(_) => None,
    }
}

/// `sslmode=prefer|require` without roots: encrypted, certificate unchecked
/// (what libpq does); handshake signatures are still verified.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
