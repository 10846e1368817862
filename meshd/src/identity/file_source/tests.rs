use std::time::Duration;

use super::*;
use crate::identity::testutil::{KubeDir, SvidFiles, TempDir};
use crate::identity::DevCa;

struct Fixture {
    _dir: TempDir,
    ca: DevCa,
    id: SpiffeId,
    id_dir: PathBuf,
}

fn fixture(label: &str) -> Fixture {
    let dir = TempDir::new(label);
    let td = TrustDomain::new("example.org").unwrap();
    let ca = DevCa::init(&dir.path().join("ca"), &td, false).unwrap();
    let id_dir = dir.path().join("svid");
    std::fs::create_dir(&id_dir).unwrap();
    Fixture { _dir: dir, ca, id: SpiffeId::new("spiffe://example.org/ns/media/sa/encoder").unwrap(), id_dir }
}

impl Fixture {
    fn files(&self) -> (Svid, SvidFiles) {
        let svid = self.ca.issue(&self.id, Duration::from_secs(3600)).unwrap();
        let files = SvidFiles::new(&svid, &[self.ca.certificate().clone()]);
        (svid, files)
    }

    fn config(&self, poll_interval: Duration, watch_events: bool) -> FileSourceConfig {
        FileSourceConfig {
            poll_interval,
            watch_events,
            ..FileSourceConfig::new(self.ca.trust_domain().clone(), vec![(self.id.clone(), self.id_dir.clone())])
        }
    }
}

/// Waits until the source serves the SVID with `serial`, or panics after 5 s.
async fn wait_for_serial(source: &FileSource, id: &SpiffeId, serial: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while source.svid(id).unwrap().serial != serial {
        assert!(tokio::time::Instant::now() < deadline, "SVID {serial} never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn loads_svid_and_bundle() {
    let fx = fixture("filesource-load");
    let (svid, files) = fx.files();
    KubeDir::create(&fx.id_dir, &files);
    let source = FileSource::start(fx.config(Duration::from_secs(5), true)).unwrap();
    let served = source.svid(&fx.id).unwrap();
    assert_eq!(served.serial, svid.serial);
    assert_eq!(served.cert_chain, svid.cert_chain);
    assert_eq!(source.bundle().roots, vec![fx.ca.certificate().clone()]);
    let other = SpiffeId::new("spiffe://example.org/other").unwrap();
    assert!(matches!(source.svid(&other), Err(Error::UnknownIdentity { .. })));
}

#[tokio::test]
async fn start_rejects_a_directory_holding_another_identity() {
    let fx = fixture("filesource-mismatch");
    let (_, files) = fx.files();
    KubeDir::create(&fx.id_dir, &files);
    let mut config = fx.config(Duration::from_secs(5), false);
    config.identities[0].0 = SpiffeId::new("spiffe://example.org/someone-else").unwrap();
    let msg = FileSource::start(config).err().expect("mismatch rejected").to_string();
    assert!(msg.contains("tls.crt") && msg.contains("configured for"), "{msg}");
}

#[tokio::test]
async fn kubernetes_symlink_swap_is_picked_up_by_the_watcher() {
    let fx = fixture("filesource-swap");
    let (first, files) = fx.files();
    let mut kube = KubeDir::create(&fx.id_dir, &files);
    // Polling far too slow to matter: only the change notification can trigger the reload.
    let source = FileSource::start(fx.config(Duration::from_secs(3600), true)).unwrap();
    let mut changes = source.changes();
    let (second, files) = fx.files();
    kube.publish(&files);
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("reload within 5 s").unwrap();
    let served = source.svid(&fx.id).unwrap();
    assert_eq!(served.serial, second.serial);
    assert_ne!(served.serial, first.serial);
}

#[tokio::test]
async fn in_place_rewrite_is_picked_up_by_polling() {
    let fx = fixture("filesource-poll");
    let (_, files) = fx.files();
    let write = |files: &SvidFiles| {
        std::fs::write(fx.id_dir.join(KEY_FILE), &files.key).unwrap();
        std::fs::write(fx.id_dir.join(CERT_FILE), &files.cert).unwrap();
        std::fs::write(fx.id_dir.join(BUNDLE_FILE), &files.bundle).unwrap();
    };
    write(&files);
    let source = FileSource::start(fx.config(Duration::from_millis(100), false)).unwrap();
    let changes = source.changes();
    let (second, files) = fx.files();
    write(&files);
    wait_for_serial(&source, &fx.id, &second.serial).await;
    assert!(*changes.borrow() >= 1);
}

#[tokio::test]
async fn broken_updates_keep_the_previous_svid() {
    let fx = fixture("filesource-broken");
    let (first, files) = fx.files();
    let mut kube = KubeDir::create(&fx.id_dir, &files);
    let source = FileSource::start(fx.config(Duration::from_millis(100), true)).unwrap();
    let changes = source.changes();

    let (second, good) = fx.files();
    let broken = [
        SvidFiles {
            cert: "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            ..fx.files().1
        },
        // New certificate with the previous key: a half-written update.
        SvidFiles { key: files.key.clone(), ..fx.files().1 },
        SvidFiles { bundle: String::new(), ..fx.files().1 },
    ];
    for update in &broken {
        kube.publish(update);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(source.svid(&fx.id).unwrap().serial, first.serial);
        assert_eq!(*changes.borrow(), 0, "a broken update bumped the change counter");
        assert_eq!(source.bundle().roots.len(), 1);
    }
    // A later good update still applies: the source kept watching.
    kube.publish(&good);
    wait_for_serial(&source, &fx.id, &second.serial).await;
    assert_eq!(*changes.borrow(), 1);
}

#[test]
fn load_errors_name_the_file_and_the_reason() {
    let fx = fixture("filesource-errors");
    let (_, files) = fx.files();
    let (_, other) = fx.files();
    let cases = [
        (SvidFiles { cert: "junk".into(), ..fx.files().1 }, "tls.crt", "no CERTIFICATE block"),
        (SvidFiles { key: other.key.clone(), ..fx.files().1 }, "tls.crt", "does not match"),
        (SvidFiles { key: "junk".into(), ..fx.files().1 }, "tls.key", "no usable private key"),
        (SvidFiles { bundle: "junk".into(), ..files }, "ca.crt", "no CERTIFICATE block"),
    ];
    for (i, (update, file, reason)) in cases.iter().enumerate() {
        let dir = fx.id_dir.join(format!("case{i}"));
        std::fs::create_dir(&dir).unwrap();
        KubeDir::create(&dir, update);
        let err = read_snapshot(&dir).and_then(|s| load(&fx.id, s)).err();
        let msg = err.expect("broken files rejected").to_string();
        assert!(msg.contains(file) && msg.contains(reason), "case {i}: {msg}");
    }
    let missing = read_snapshot(&fx.id_dir.join("nowhere")).err().unwrap().to_string();
    assert!(missing.starts_with("read SVID certificate ") && missing.contains("tls.crt"));
}

#[test]
fn snapshots_are_read_through_the_resolved_data_link() {
    // All three files come from one generation directory, so a `..data` swap between two
    // reads cannot mix generations.
    let fx = fixture("filesource-datalink");
    let (_, files) = fx.files();
    let mut kube = KubeDir::create(&fx.id_dir, &files);
    let (_, second) = fx.files();
    kube.publish(&second);
    let snapshot = read_snapshot(&fx.id_dir).unwrap();
    let current = fx.id_dir.join("..gen_2").canonicalize().unwrap();
    assert_eq!(snapshot.base, current);
    assert_eq!(snapshot.cert, second.cert.as_bytes());
    // Without `..data`, the directory itself is read.
    let plain = fx.id_dir.join("plain");
    std::fs::create_dir(&plain).unwrap();
    for (name, body) in [("tls.crt", &second.cert), ("tls.key", &second.key), ("ca.crt", &second.bundle)] {
        std::fs::write(plain.join(name), body).unwrap();
    }
    assert_eq!(read_snapshot(&plain).unwrap().base, plain);
}
