//! Successful mutual handshakes and the properties of the configs.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConnection, ProtocolVersion};

use super::support::{connect, exchange, id, ping_pong, td, Pki, PING, PONG};
use crate::identity::{FileSource, FileSourceConfig, IdentitySource, TrustDomain};
use crate::tls::{client_config, peer_identity, server_config, Error, ALPN};

#[tokio::test]
async fn mutual_handshake_learns_peer_ids_and_moves_data() {
    let pki = Pki::new("tls-ok");
    let source = pki.ca_source();
    let client = client_config(source.clone(), id("ns/a/sa/client"), td()).unwrap();
    let server = server_config(source, id("ns/b/sa/server"), td()).unwrap();

    let ex = exchange(client.clone(), server.clone()).await;
    assert!(ex.client_err.is_none(), "{:?}", ex.client_err);
    assert!(ex.server_err.is_none(), "{:?}", ex.server_err);
    assert_eq!(ex.client_peer, Some(id("ns/b/sa/server")));
    assert_eq!(ex.server_peer, Some(id("ns/a/sa/client")));
    assert_eq!(ex.server_got, PING);
    assert_eq!(ex.client_got, PONG);

    let (mut c, mut s) = connect(client, server).await;
    ping_pong(&mut c, &mut s).await;
    let (_, conn) = c.get_ref();
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    assert!(
        matches!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256 | CipherSuite::TLS13_AES_256_GCM_SHA384),
        "{suite:?}"
    );
    assert_eq!(conn.alpn_protocol(), Some(ALPN));
    // No session tickets arrived, even after application data flowed.
    assert_eq!(conn.tls13_tickets_received(), 0);
    // Keys can be handed to kernel TLS on both sides.
    let (_, client_conn) = c.into_inner();
    let (_, server_conn) = s.into_inner();
    client_conn.dangerous_extract_secrets().unwrap();
    server_conn.dangerous_extract_secrets().unwrap();
}

#[tokio::test]
async fn configs_pin_tls13_aes_gcm_and_no_resumption() {
    let pki = Pki::new("tls-props");
    let source = pki.ca_source();
    let client = client_config(source.clone(), id("c"), td()).unwrap();
    let server = server_config(source, id("s"), td()).unwrap();
    for provider in [client.crypto_provider(), server.crypto_provider()] {
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites, [CipherSuite::TLS13_AES_256_GCM_SHA384, CipherSuite::TLS13_AES_128_GCM_SHA256]);
    }
    assert!(client.enable_secret_extraction && server.enable_secret_extraction);
    assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
    assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
    assert_eq!(server.send_tls13_tickets, 0);
    assert!(!server.ticketer.enabled());
    assert!(!server.session_storage.can_cache());
}

#[tokio::test]
async fn client_without_alpn_is_refused() {
    let pki = Pki::new("tls-alpn-client");
    let source = pki.ca_source();
    let mut client = (*client_config(source.clone(), id("c"), td()).unwrap()).clone();
    client.alpn_protocols.clear();
    let server = server_config(source, id("s"), td()).unwrap();
    let ex = exchange(Arc::new(client), server).await;
    assert!(ex.server_err.is_some() && ex.client_err.is_some());
    assert!(ex.server_got.is_empty() && ex.client_got.is_empty());
}

#[tokio::test]
async fn server_without_alpn_is_caught_by_peer_identity() {
    let pki = Pki::new("tls-alpn-server");
    let source = pki.ca_source();
    let client = client_config(source.clone(), id("c"), td()).unwrap();
    let mut server = (*server_config(source, id("s"), td()).unwrap()).clone();
    server.alpn_protocols.clear();
    let (c, _s) = connect(client, Arc::new(server)).await;
    let err = peer_identity(c.get_ref().1).unwrap_err();
    assert!(matches!(&err, Error::Alpn { got } if got == "none"), "{err}");
}

#[tokio::test]
async fn peer_identity_needs_a_finished_handshake() {
    let pki = Pki::new("tls-nopeer");
    let client = client_config(pki.ca_source(), id("c"), td()).unwrap();
    let name = ServerName::try_from("meshd.invalid").unwrap();
    let conn = ClientConnection::new(client, name).unwrap();
    assert!(matches!(peer_identity(&conn), Err(Error::NoPeerCertificate)));
}

#[tokio::test]
async fn config_building_checks_the_local_identity() {
    let pki = Pki::new("tls-local");
    let source = pki.ca_source();
    let other = TrustDomain::new("other.org").unwrap();
    let err = client_config(source.clone(), id("c"), other).unwrap_err();
    assert!(matches!(err, Error::ForeignLocalIdentity { .. }), "{err}");

    // A file source configured for one identity cannot serve another.
    let svid = source.svid(&id("s")).unwrap();
    let dir = pki.subdir("svid");
    let files = crate::identity::testutil::SvidFiles::new(&svid, &[pki.ca.certificate().clone()]);
    crate::identity::testutil::KubeDir::create(&dir, &files);
    let files = FileSource::start(FileSourceConfig::new(td(), vec![(id("s"), dir)])).unwrap();
    let err = server_config(files, id("not-here"), td()).unwrap_err();
    assert!(matches!(err, Error::LocalSvid { .. }), "{err}");
    assert!(err.to_string().contains("not configured"), "{err}");
}
