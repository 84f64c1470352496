//! The TLS of `https` checks (rustls with ring): the certificate verified against the Mozilla
//! roots compiled in (webpki-roots, the same on every machine whatever its store), or not at
//! all with `insecure = true` (self-signed backends).

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, ServerName, UnixTime},
    },
};

use super::Failure;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The client config, built once: verifying, or `insecure`.
fn config(insecure: bool) -> Result<Arc<ClientConfig>, Failure> {
    static VERIFYING: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    static INSECURE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let cell = if insecure { &INSECURE } else { &VERIFYING };
    cell.get_or_init(|| {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?;
        let config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
                .with_no_client_auth()
        } else {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Arc::new(config))
    })
    .clone()
    .map_err(|err| Failure {
        reason: format!("TLS setup: {err}"),
        local: true,
    })
}

/// The TLS handshake with `target` on `stream`; the certificate must name `server_name` (or
/// the target's address) unless `insecure`.
pub(super) async fn handshake(
    stream: TcpStream,
    target: SocketAddr,
    insecure: bool,
    server_name: Option<&str>,
) -> Result<TlsStream<TcpStream>, Failure> {
    let name = match server_name {
        Some(name) => ServerName::try_from(name.to_owned()).map_err(|err| Failure {
            reason: format!("server name {name:?}: {err}"),
            local: true,
        })?,
        None => ServerName::IpAddress(target.ip().into()),
    };
    TlsConnector::from(config(insecure)?)
        .connect(name, stream)
        .await
        .map_err(|err| Failure::backend(format!("TLS handshake: {err}")))
}

/// Accepts any certificate (`insecure = true`), still checking the handshake's signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
