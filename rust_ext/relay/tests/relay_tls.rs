//! The relay's rustls configurations (docs/relay.md "TLS"): built from PEM material, refused with a clear
//! error when it does not load, and a refused handshake labelled with its reason. Real handshakes on 127.0.0.1.

mod relay_common;

use std::sync::Arc;

use relay_common::*;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use zonegate_relay::config::TlsMaterial;
use zonegate_relay::tls::{client_config, failure_reason, server_config};

#[test]
fn configurations_build_from_generated_material() {
    let ca = ca("zone CA");
    let server = server_config(&material(&server_leaf(&ca), &ca, None)).expect("server config");
    assert!(server.send_tls13_tickets == 0, "no session tickets");
    let client = client_config(&material(&client_leaf(&ca, "operator", 20), &ca, Some(crl(&ca, &[99]))));
    assert!(client.is_ok(), "{:?}", client.err());
}

#[test]
fn material_that_does_not_load_is_a_clear_error() {
    let ca = ca("zone CA");
    let good = material(&server_leaf(&ca), &ca, None);
    let cases: [(&str, TlsMaterial); 5] = [
        ("private key", TlsMaterial { key_pem: b"not a key".to_vec(), ..good.clone() }),
        (
            "CA bundle",
            TlsMaterial {
                ca_pem: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                ..good.clone()
            },
        ),
        ("CA bundle", TlsMaterial { ca_pem: Vec::new(), ..good.clone() }),
        ("certificate", TlsMaterial { cert_pem: b"nothing".to_vec(), ..good.clone() }),
        ("CRL", TlsMaterial { crl_pem: Some(b"no CRL here".to_vec()), ..good.clone() }),
    ];
    for (what, m) in cases {
        let err = server_config(&m).err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(err.contains(what), "{what}: {err}");
        let err = client_config(&m).err().unwrap_or_else(|| panic!("{what}: accepted by the client side"));
        assert!(err.contains(what), "{what}: {err}");
    }
    // A key that is not the certificate's.
    let other = client_leaf(&ca, "other", 21);
    let err = server_config(&TlsMaterial { key_pem: other.key_pem.clone(), ..good.clone() }).unwrap_err();
    assert!(err.contains("do not load together"), "{err}");
    // The key's bytes never appear in a message.
    let err = server_config(&TlsMaterial { key_pem: b"SECRET-KEY-BYTES".to_vec(), ..good }).unwrap_err();
    assert!(!err.contains("SECRET"), "{err}");
}

/// How the test client is built.
enum Client<'a> {
    /// zonegate's own client configuration from this material.
    Zonegate(&'a TlsMaterial),
    /// No certificate.
    Anonymous,
    /// TLS 1.2 offering only this suite (no certificate).
    Tls12Only(rustls::SupportedCipherSuite),
}

/// One handshake between a server built from `server` and `client`; the server side's result as a failure
/// reason, or "ok".
fn handshake(server: &TlsMaterial, client: Client<'_>, client_ca: &Ca) -> &'static str {
    let rt = runtime();
    let acceptor = TlsAcceptor::from(server_config(server).unwrap());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.cert.der().clone()).unwrap();
    let connector = match client {
        Client::Zonegate(m) => TlsConnector::from(client_config(m).unwrap()),
        Client::Tls12Only(suite) => {
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..rustls::crypto::ring::default_provider()
            };
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        }
        Client::Anonymous => {
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        }
    };
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            // Keep the stream open until the server has decided.
            let stream = connector.connect(name, tcp).await;
            if let Ok(mut s) = stream {
                let _ = closed_by_peer(&mut s).await;
            }
        });
        let (tcp, _) = tokio::time::timeout(BOUND, listener.accept()).await.unwrap().unwrap();
        let result = tokio::time::timeout(BOUND, acceptor.accept(tcp)).await.expect("handshake in time");
        let reason = match &result {
            Ok(_) => "ok",
            Err(e) => failure_reason(e),
        };
        drop(result);
        let _ = tokio::time::timeout(BOUND, client).await;
        reason
    })
}

#[test]
fn handshakes_succeed_or_fail_with_their_reason() {
    let ca = ca("zone CA");
    let server = material(&server_leaf(&ca), &ca, Some(crl(&ca, &[66])));
    let operator = material(&client_leaf(&ca, "operator", 20), &ca, None);
    assert_eq!(handshake(&server, Client::Zonegate(&operator), &ca), "ok");

    let revoked = material(&client_leaf(&ca, "revoked", 66), &ca, None);
    assert_eq!(handshake(&server, Client::Zonegate(&revoked), &ca), "certificate_revoked");

    let rogue = relay_common::ca("rogue CA");
    let stranger =
        TlsMaterial { ca_pem: ca.cert.pem().into_bytes(), ..material(&client_leaf(&rogue, "x", 30), &rogue, None) };
    assert_eq!(handshake(&server, Client::Zonegate(&stranger), &ca), "unknown_ca");

    assert_eq!(handshake(&server, Client::Anonymous, &ca), "no_client_certificate");

    // TLS 1.2 takes AES-128-GCM only (TLS12_CIPHERS): AES-256-GCM or ChaCha20 alone share nothing.
    use rustls::crypto::ring::cipher_suite as suites;
    for suite in
        [suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]
    {
        assert_eq!(handshake(&server, Client::Tls12Only(suite), &ca), "no_shared_cipher");
    }
}
