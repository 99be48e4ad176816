//! rustls configurations for Modbus/TCP Security, matching what zonegate/controlplane/tls.py asks of OpenSSL
//! (docs/relay.md, "TLS"), and the mapping of a failed handshake to the metric's reason label.

use std::io;
use std::sync::Arc;

use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{AlertDescription, CertificateError, ClientConfig, Error, PeerIncompatible, RootCertStore, ServerConfig};

use crate::config::TlsMaterial;

/// The provider both sides use: ring, TLS 1.3's three suites and, for TLS 1.2, `TLS12_CIPHERS` of
/// zonegate/controlplane/tls.py: ECDHE with AES-128-GCM-SHA256 only, for ECDSA and RSA keys (MB-TCP-Security).
fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        ..ring::default_provider()
    })
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate does not load: {e}"))?;
    if certs.is_empty() {
        return Err("certificate does not load: no PEM certificate found".to_owned());
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    // The key's bytes never go into a message: only the kind of failure does.
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err("private key does not load: no PEM private key found".to_owned()),
        Err(_) => Err("private key does not load: invalid PEM".to_owned()),
    }
}

fn roots(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    let cas = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA bundle does not load: {e}"))?;
    for ca in cas {
        store.add(ca).map_err(|e| format!("CA bundle does not load: {e}"))?;
    }
    if store.is_empty() {
        return Err("CA bundle does not load: no PEM certificate found".to_owned());
    }
    Ok(Arc::new(store))
}

fn crls(pem: Option<&[u8]>) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let Some(pem) = pem else { return Ok(Vec::new()) };
    let crls = rustls_pemfile::crls(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CRL does not load: {e}"))?;
    if crls.is_empty() {
        return Err("CRL does not load: no PEM CRL found".to_owned());
    }
    Ok(crls)
}

/// A `modbus_tls` listener's configuration: the client's certificate is mandatory and its whole chain must end
/// at the CA bundle; CRLs, when given, are checked for the end-entity certificate only (VERIFY_CRL_CHECK_LEAF).
/// Err: which part of the material does not load, and why (never the key's bytes).
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let chain = certs(&material.cert_pem)?;
    let key = key(&material.key_pem)?;
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(&material.ca_pem)?, provider.clone());
    let crls = crls(material.crl_pem.as_deref())?;
    if !crls.is_empty() {
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(|e| format!("CA bundle or CRL does not load: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not load together: {e}"))?;
    // OP_NO_TICKET and no session cache: every connection runs a full handshake, so every one is verified
    // against the CA and CRL in force (a reload's new CRL applies to the next connection).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// An outbound device's configuration: zonegate's own certificate, the server's chain verified to the CA
/// (CRLs for its end-entity certificate when given); the server name is checked by the caller's `ServerName`.
pub fn client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let chain = certs(&material.cert_pem)?;
    let key = key(&material.key_pem)?;
    let mut verifier = WebPkiServerVerifier::builder_with_provider(roots(&material.ca_pem)?, provider.clone());
    let crls = crls(material.crl_pem.as_deref())?;
    if !crls.is_empty() {
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(|e| format!("CA bundle or CRL does not load: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("certificate and key do not load together: {e}"))?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The reason label (Python's FAILURE_REASONS) of a handshake that failed with this I/O error; tokio-rustls
/// wraps rustls's error in one.
pub fn failure_reason(err: &io::Error) -> &'static str {
    if let Some(tls) = err.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        return tls_failure_reason(tls);
    }
    match err.kind() {
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => "connection_lost",
        _ => "other",
    }
}

/// The reason label of a rustls error.
pub fn tls_failure_reason(err: &Error) -> &'static str {
    match err {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "certificate_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "certificate_not_yet_valid",
            CertificateError::Revoked => "certificate_revoked",
            _ => "bad_certificate",
        },
        Error::PeerIncompatible(p) => match p {
            PeerIncompatible::NoCipherSuitesInCommon => "no_shared_cipher",
            // What a TLS 1.0 or 1.1 ClientHello lacks: rustls refuses it for that before looking at the version.
            PeerIncompatible::SignatureAlgorithmsExtensionRequired => "protocol_version",
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled => "protocol_version",
            _ => "other",
        },
        // The peer refused us: OpenSSL reports such alerts by name (SSLV3_ALERT_*_CERTIFICATE, ...).
        Error::AlertReceived(alert) => match alert {
            AlertDescription::ProtocolVersion => "protocol_version",
            AlertDescription::UnknownCA => "unknown_ca",
            AlertDescription::CertificateExpired => "certificate_expired",
            AlertDescription::CertificateRevoked => "certificate_revoked",
            AlertDescription::CertificateRequired => "no_client_certificate",
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown => "bad_certificate",
            _ => "other",
        },
        _ => "other",
    }
}
