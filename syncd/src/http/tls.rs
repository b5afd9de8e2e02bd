//! The server half of mutual TLS between hosts: this host's certificate, and the archive's
//! authority as the only one whose client certificates are accepted. A client without such a
//! certificate never gets past the handshake, so it can send no request at all, with or
//! without the token. (The client half, presenting this host's certificate, is in
//! [`crate::transfer`].)

use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_catalog::config::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificates of a PEM file; an error if it cannot be read or holds none.
fn certificates(path: &std::path::Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} ({what}) holds no certificate", path.display());
    }
    Ok(certs)
}

/// The TLS setup of the server: `files.cert` and `files.key` to present, and client
/// certificates required and checked against `files.ca`.
pub fn server_config(files: TlsFiles<'_>) -> Result<Arc<rustls::ServerConfig>> {
    let certs = certificates(files.cert, "certificate chain (transfer.tls_cert)")?;
    let key = PrivateKeyDer::from_pem_file(files.key).with_context(|| {
        format!(
            "cannot read the private key {} (transfer.tls_key)",
            files.key.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(files.ca, "authority (transfer.tls_ca)")? {
        roots.add(ca).with_context(|| {
            format!(
                "{} (transfer.tls_ca) holds a certificate that cannot be an authority",
                files.ca.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("cannot check client certificates against transfer.tls_ca")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS identity")?;
    Ok(Arc::new(config))
}
