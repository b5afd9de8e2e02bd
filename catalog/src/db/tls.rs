//! TLS for connections to a PostgreSQL catalog, with rustls, as libpq's `sslmode` and
//! `sslrootcert` ask for it in the URL.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default) | if the server offers it | no |
//! | `require` | yes, or no connection | no; against `sslrootcert` when one is given (as libpq) |
//! | `verify-ca` | yes | signed by an authority in `sslrootcert` |
//! | `verify-full` | yes | that, and it names the host connected to (DNS name or IP address) |
//!
//! `sslrootcert` is a PEM file of one or more authorities; for `verify-ca` and `verify-full`
//! it defaults to `~/.postgresql/root.crt`, as in libpq. A certificate that does not pass is
//! refused during the handshake: the connection fails with the reason (unknown issuer, not
//! valid for the name, expired), never falls back to plain text.
//!
//! The `postgres` client parses neither `verify-*` nor `sslrootcert`: [`split_url`] takes
//! them out of the URL and leaves it the client's `require` where TLS is required.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::config::SslMode;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode, String> {
        Ok(match text {
            "disable" => Mode::Disable,
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }

    /// The client's own setting: it knows disable, prefer and require.
    pub fn client_mode(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// The TLS part of a catalog URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of the query of `url`; returns the rest of the URL
/// and what they said.
pub fn split_url(url: &str) -> Result<(String, Options), String> {
    let mut options = Options {
        mode: Mode::Prefer,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), options));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => options.mode = Mode::parse(&percent_decode(v))?,
            Some(("sslrootcert", v)) => options.root_cert = Some(percent_decode(v).into()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, options))
}

fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The connector for the client: TLS as [`Options`] say.
#[derive(Clone)]
pub struct Connector {
    /// `None`: plain text only (`sslmode=disable`).
    config: Option<Arc<rustls::ClientConfig>>,
}

impl Connector {
    /// The connector `options` ask for; an unreadable or empty `sslrootcert` is an error
    /// naming it.
    pub fn new(options: &Options) -> Result<Connector, String> {
        if options.mode == Mode::Disable {
            return Ok(Connector { config: None });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let root_cert = match (&options.root_cert, options.mode) {
            (Some(p), _) => Some(p.clone()),
            (None, Mode::VerifyCa | Mode::VerifyFull) => {
                Some(default_root_cert().ok_or_else(|| {
                    format!(
                        "sslmode={} needs the certificate authority: give sslrootcert=PATH \
                         (a PEM file) in the URL, or put it in ~/.postgresql/root.crt",
                        if options.mode == Mode::VerifyCa {
                            "verify-ca"
                        } else {
                            "verify-full"
                        }
                    )
                })?)
            }
            (None, _) => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match root_cert {
            None => Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
            Some(path) => {
                let roots = Arc::new(load_roots(&path)?);
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                if options.mode == Mode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyName { inner: webpki })
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Connector {
            config: Some(Arc::new(config)),
        })
    }
}

fn default_root_cert() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    p.exists().then_some(p)
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {shown}: cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslrootcert {shown}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("sslrootcert {shown} holds no certificate"));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
    }
    Ok(roots)
}

/// `sslmode=require` without an authority: encrypted, the certificate not checked (as libpq),
/// though the handshake's signatures still are.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to the authority; the name is not checked.
#[derive(Debug)]
struct AnyName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
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

// ---- the client's TLS traits ----

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Handshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Handshake> {
        // A unix socket has no host name (and the server offers no TLS there).
        let domain = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} is not a name TLS can check: {e}"),
            )
        })?;
        Ok(Handshake {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct Handshake {
    config: Option<Arc<rustls::ClientConfig>>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS is disabled (sslmode=disable)",
                )
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(Stream(Box::new(tls)))
        })
    }
}

/// A TLS stream to the server.
pub struct Stream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding needs the certificate's hash by its signature algorithm; the
        // certificate checks above are what protect the connection.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_options_leave_the_url_and_the_rest_stays() {
        let (rest, o) = split_url(
            "postgres://cairn@db/cairn?sslmode=verify-full&sslrootcert=/etc/cairn/ca%20x.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(rest, "postgres://cairn@db/cairn?connect_timeout=5");
        assert_eq!(o.mode, Mode::VerifyFull);
        assert_eq!(
            o.root_cert.as_deref(),
            Some(Path::new("/etc/cairn/ca x.pem"))
        );

        let (rest, o) = split_url("postgres://cairn@db/cairn?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://cairn@db/cairn");
        assert_eq!(o.mode, Mode::Require);

        let (rest, o) = split_url("postgres://cairn@db/cairn").unwrap();
        assert_eq!(rest, "postgres://cairn@db/cairn");
        assert_eq!(o.mode, Mode::Prefer);
    }

    #[test]
    fn an_unknown_sslmode_is_named() {
        let err = split_url("postgres://db/c?sslmode=always").unwrap_err();
        assert!(err.contains("sslmode=always"), "{err}");
    }

    #[test]
    fn verification_without_an_authority_says_what_to_give() {
        let o = Options {
            mode: Mode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let err = Connector::new(&o).err().expect("refused");
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
    }
}
