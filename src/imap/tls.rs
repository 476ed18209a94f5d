//! TLS set-up: system roots plus the account's `ca-file`, or a pinned
//! certificate fingerprint that replaces chain and host-name checks (home
//! servers use self-signed certificates reached by IP address).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::ImapError;

/// Builds the rustls client configuration for one account.
pub fn client_config(
    ca_file: Option<&Path>,
    fingerprint: Option<[u8; 32]>,
) -> Result<Arc<ClientConfig>, ImapError> {
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    // The first group is the one the ClientHello carries a key share for;
    // a server that does not take it asks again (HelloRetryRequest), one
    // round trip more on every connection. RFC 8446 9.1: every TLS 1.3
    // server MUST support secp256r1 and only SHOULD support X25519, and
    // Cyrus takes only its `tls_eccurve`, by default prime256v1
    // (imapd.conf(5)): with X25519 first, rustls's default, its handshake
    // took one round trip more (the interop tests' turn count).
    let provider = Arc::new(CryptoProvider {
        kx_groups: vec![SECP256R1, X25519, SECP384R1],
        ..rustls::crypto::ring::default_provider()
    });
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls(e.to_string()))?;
    let config = match fingerprint {
        Some(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert { pin, provider }))
            .with_no_client_auth(),
        None => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(ca_file)?),
                provider,
            )
            .build()
            .map_err(|e| ImapError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedFingerprint { inner }))
                .with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, ImapError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ImapError::CaFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(ImapError::CaFile {
                path: path.to_path_buf(),
                reason: "no PEM certificate in it".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ImapError::CaFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// Parses `sha256:AB:CD:...` (prefix optional, colons optional, any case).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

/// The fingerprint of a DER certificate, as `check` prints it.
pub fn fingerprint_of(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let parts: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", parts.join(":"))
}

/// The standard chain and host-name check; a refusal names the server
/// certificate's fingerprint, so the user can pin it if they trust it.
#[derive(Debug)]
struct NamedFingerprint {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for NamedFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| {
                rustls::Error::General(format!(
                    "{e} (server certificate {})",
                    fingerprint_of(end_entity.as_ref())
                ))
            })
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

#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match the pinned cert-fingerprint",
                fingerprint_of(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_accepts_prefix_colons_and_any_case() {
        let hex = "ab".repeat(32);
        let with_colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        let a = parse_fingerprint(&format!("sha256:{}", with_colons.join(":")));
        let b = parse_fingerprint(&hex);
        assert_eq!(a, Some([0xab; 32]));
        assert_eq!(a, b);
    }

    #[test]
    fn fingerprint_rejects_wrong_length_and_garbage() {
        assert_eq!(parse_fingerprint("sha256:AB:CD"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }
}
