//! Rotation: new handshakes use new material at once; established connections continue.

use std::time::Duration;

use super::support::SettableSource;
use super::support::{connect, exchange, id, peer_serial, ping_pong, td, verify_reason, Pki};
use crate::identity::testutil::{KubeDir, SvidFiles};
use crate::identity::{FileSource, FileSourceConfig, IdentitySource};
use crate::tls::{client_config, server_config, VerifyError};

#[tokio::test]
async fn ca_source_rotation_reaches_new_handshakes_only() {
    let pki = Pki::new("tls-rotate-ca");
    let source = pki.ca_source();
    let client = client_config(source.clone(), id("client"), td()).unwrap();
    let server = server_config(source.clone(), id("server"), td()).unwrap();

    let (mut c1, mut s1) = connect(client.clone(), server.clone()).await;
    let server_serial_1 = peer_serial(c1.get_ref().1);
    let client_serial_1 = peer_serial(s1.get_ref().1);
    assert_eq!(server_serial_1, source.svid(&id("server")).unwrap().serial);

    let server_svid_2 = source.rotate(&id("server")).unwrap();
    let client_svid_2 = source.rotate(&id("client")).unwrap();
    let (mut c2, mut s2) = connect(client, server).await;
    assert_eq!(peer_serial(c2.get_ref().1), server_svid_2.serial);
    assert_eq!(peer_serial(s2.get_ref().1), client_svid_2.serial);
    assert_ne!(server_svid_2.serial, server_serial_1);
    assert_ne!(client_svid_2.serial, client_serial_1);

    // The connection from before the rotation is untouched and still carries data.
    ping_pong(&mut c1, &mut s1).await;
    assert_eq!(peer_serial(c1.get_ref().1), server_serial_1);
    ping_pong(&mut c2, &mut s2).await;
}

#[tokio::test]
async fn file_source_rotation_and_corrupt_update() {
    let pki = Pki::new("tls-rotate-files");
    let issuer = pki.ca_source();
    let server_id = id("ns/media/sa/server");
    let roots = [pki.ca.certificate().clone()];
    let first = issuer.svid(&server_id).unwrap();
    let dir = pki.subdir("server-svid");
    let mut kube = KubeDir::create(&dir, &SvidFiles::new(&first, &roots));
    let config = FileSourceConfig {
        poll_interval: Duration::from_millis(100),
        ..FileSourceConfig::new(td(), vec![(server_id.clone(), dir)])
    };
    let files = FileSource::start(config).unwrap();
    let mut changes = files.changes();
    let client = client_config(issuer.clone(), id("client"), td()).unwrap();
    let server = server_config(files.clone(), server_id.clone(), td()).unwrap();

    let (mut c1, mut s1) = connect(client.clone(), server.clone()).await;
    assert_eq!(peer_serial(c1.get_ref().1), first.serial);

    // Kubernetes-style `..data` symlink swap to a new SVID.
    let second = issuer.rotate(&server_id).unwrap();
    kube.publish(&SvidFiles::new(&second, &roots));
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("reload within 5 s").unwrap();
    let (mut c2, mut s2) = connect(client.clone(), server.clone()).await;
    assert_eq!(peer_serial(c2.get_ref().1), second.serial);
    assert_ne!(second.serial, first.serial);
    ping_pong(&mut c1, &mut s1).await;
    ping_pong(&mut c2, &mut s2).await;

    // A corrupt update (truncated certificate) is ignored: handshakes keep the second SVID.
    let mut corrupt = SvidFiles::new(&issuer.rotate(&server_id).unwrap(), &roots);
    corrupt.cert.truncate(corrupt.cert.len() / 2);
    kube.publish(&corrupt);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!changes.has_changed().unwrap(), "corrupt update was applied");
    let (mut c3, mut s3) = connect(client, server).await;
    assert_eq!(peer_serial(c3.get_ref().1), second.serial);
    ping_pong(&mut c3, &mut s3).await;
}

#[tokio::test]
async fn verifiers_read_the_current_bundle() {
    let pki = Pki::new("tls-rotate-bundle");
    let other = Pki::new("tls-rotate-bundle-other");
    let good = pki.ca_source();
    let client_source = SettableSource::new(pki.custom_svid(|_| {}), pki.ca.bundle());
    let client = client_config(client_source.clone(), id("client"), td()).unwrap();
    let server = server_config(good, id("server"), td()).unwrap();
    let (mut c1, mut s1) = connect(client.clone(), server.clone()).await;

    // The client now trusts only another CA: the same config rejects the server it accepted.
    client_source.set_bundle(other.ca.bundle());
    let ex = exchange(client, server).await;
    let err = ex.client_err.expect("server rejected under the new bundle");
    assert!(
        matches!(verify_reason(&err), Some(VerifyError::UntrustedChain { reason: webpki::Error::UnknownIssuer, .. })),
        "{err}"
    );
    assert!(ex.server_got.is_empty(), "server app received {:?}", ex.server_got);
    ping_pong(&mut c1, &mut s1).await;
}
