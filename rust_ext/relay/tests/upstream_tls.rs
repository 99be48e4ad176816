//! The device pool to a Modbus/TCP Security device (outbound conduit): mutual TLS with certificates made by
//! rcgen at test time, the server's chain and name checked (docs/relay.md, "TLS").

mod upstream_common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use upstream_common::*;
use zonegate_relay::config::TlsMaterial;
use zonegate_relay::upstream::DevicePool;

const PATH_UNAVAILABLE: u8 = 0x0A;

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A leaf certificate and its key (PEM) for these names (IP addresses or DNS names).
    fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (Certificate, KeyPair) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.cert, &self.key).unwrap(), key)
    }
}

/// zonegate's side: its client certificate and the CA the device's certificate must chain to.
fn client_material(issuer: &Ca, trusted: &Ca) -> TlsMaterial {
    let (cert, key) = issuer.issue("zonegate", &[], ExtendedKeyUsagePurpose::ClientAuth);
    TlsMaterial {
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        ca_pem: trusted.cert.pem().into_bytes(),
        crl_pem: None,
    }
}

/// A Modbus/TCP Security server: its certificate for `names`, client certificates required from `ca`.
/// `peers` collects the client certificate each connection presented.
fn tls_device(
    listener: tokio::net::TcpListener,
    ca: &Ca,
    names: &[&str],
    peers: Arc<Mutex<Vec<CertificateDer<'static>>>>,
) -> Device {
    let (cert, key) = ca.issue("level-3 server", names, ExtendedKeyUsagePurpose::ServerAuth);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    device_on(listener, move |_, tcp| {
        let acceptor = acceptor.clone();
        let peers = peers.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            if let Some(chain) = tls.get_ref().1.peer_certificates() {
                peers.lock().unwrap().push(chain[0].clone().into_owned());
            }
            serve_reversed(tls).await
        }
    })
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn tls_config(port: u16, host: &str, material: TlsMaterial) -> Arc<zonegate_relay::config::DeviceConfig> {
    let mut config = device_config(port, true, 8, Duration::from_secs(5));
    config.host = host.to_owned();
    config.tls = Some(material);
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_over_mutual_tls_to_a_device_named_by_ip_address() {
    let ca = Ca::new("plant CA");
    let peers = Arc::new(Mutex::new(Vec::new()));
    let dev = tls_device(listener().await, &ca, &["127.0.0.1"], peers.clone());
    let material = client_material(&ca, &ca);
    let metrics = metrics();
    let pool = DevicePool::new(tls_config(dev.port, "127.0.0.1", material), metrics.clone()).unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let request = read_holding(i % 2, 1, 40 + i, 2);
            (pool.forward(&request, deadline_in(5_000)).await, request)
        });
    }
    while let Some(joined) = tokio::time::timeout(BOUND, tasks.join_next()).await.unwrap() {
        let (got, request) = joined.unwrap();
        assert_eq!(got.unwrap().reply, answer(&request));
    }
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 1);
    let peers = peers.lock().unwrap();
    assert_eq!(peers.len(), 1, "the device saw zonegate's client certificate");
    assert_eq!(up(&metrics, "plc"), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_named_by_dns_name_is_checked_against_it() {
    let ca = Ca::new("plant CA");
    let peers = Arc::new(Mutex::new(Vec::new()));
    let dev = tls_device(listener().await, &ca, &["localhost"], peers);
    let pool = DevicePool::new(tls_config(dev.port, "localhost", client_material(&ca, &ca)), metrics()).unwrap();
    let request = read_holding(1, 1, 3, 1);
    assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap().reply, answer(&request));

    // The same certificate does not name 127.0.0.1: refused, as an unreachable device.
    let metrics = metrics();
    let pool = DevicePool::new(tls_config(dev.port, "127.0.0.1", client_material(&ca, &ca)), metrics.clone()).unwrap();
    assert_eq!(pool.forward(&request, deadline_in(5_000)).await.unwrap_err(), PATH_UNAVAILABLE);
    assert_eq!(fault(&metrics, "plc", "connect_failed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_certificate_is_from_another_ca_is_unavailable() {
    let device_ca = Ca::new("someone else's CA");
    let ours = Ca::new("plant CA");
    let dev = tls_device(listener().await, &device_ca, &["127.0.0.1"], Arc::new(Mutex::new(Vec::new())));
    let metrics = metrics();
    let pool =
        DevicePool::new(tls_config(dev.port, "127.0.0.1", client_material(&ours, &ours)), metrics.clone()).unwrap();
    let got = pool.forward(&read_holding(1, 1, 0, 1), deadline_in(5_000)).await;
    assert_eq!(got.unwrap_err(), PATH_UNAVAILABLE);
    assert_eq!(fault(&metrics, "plc", "connect_failed"), 1);
    assert_eq!(up(&metrics, "plc"), Some(false));
}

#[tokio::test]
async fn tls_material_that_does_not_load_fails_the_pool() {
    let mut material = client_material(&Ca::new("plant CA"), &Ca::new("plant CA"));
    material.key_pem = b"not a key".to_vec();
    let err = DevicePool::new(tls_config(502, "127.0.0.1", material), metrics()).err().expect("refused");
    assert!(err.contains("private key"), "{err}");
    assert!(!err.contains("not a key"));
}
