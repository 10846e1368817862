use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::identity::testutil::TempDir;

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

/// Verifies `svid` chains to `root` for client auth, as a peer would.
fn chains_to(svid: &Svid, root: &CertificateDer<'_>) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(root)?;
    let ee = webpki::EndEntityCert::try_from(&svid.cert_chain[0])?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

#[test]
fn init_writes_files_refuses_overwrite_and_loads() {
    let dir = TempDir::new("ca-init");
    let ca = DevCa::init(dir.path(), &td("example.org"), false).unwrap();
    let key_mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let err = DevCa::init(dir.path(), &td("example.org"), false).unwrap_err();
    assert!(matches!(err, Error::CaExists { .. }), "{err}");
    // The refused init left the first CA in place.
    let loaded = DevCa::load(dir.path()).unwrap();
    assert_eq!(loaded.certificate(), ca.certificate());
    assert_eq!(loaded.trust_domain(), &td("example.org"));

    // A CA loaded from disk issues SVIDs that chain to the stored certificate.
    let svid = loaded.issue(&id("spiffe://example.org/a"), Duration::from_secs(60)).unwrap();
    chains_to(&svid, ca.certificate()).unwrap();

    let forced = DevCa::init(dir.path(), &td("example.org"), true).unwrap();
    assert_ne!(forced.certificate(), ca.certificate());
    assert_eq!(DevCa::load(dir.path()).unwrap().certificate(), forced.certificate());
    // The old CA's SVIDs no longer chain to the new one.
    assert!(chains_to(&svid, forced.certificate()).is_err());
}

#[test]
fn issued_svid_has_the_svid_shape() {
    let dir = TempDir::new("ca-shape");
    let ca = DevCa::init(dir.path(), &td("example.org"), false).unwrap();
    let spiffe_id = id("spiffe://example.org/ns/media/sa/encoder");
    let ttl = Duration::from_secs(3600);
    let before = OffsetDateTime::now_utc();
    let svid = ca.issue(&spiffe_id, ttl).unwrap();
    let after = OffsetDateTime::now_utc();
    assert_eq!(svid.spiffe_id, spiffe_id);
    assert_eq!(svid.cert_chain.len(), 1);

    let info = CertInfo::parse(&svid.cert_chain[0]).unwrap();
    assert_eq!(info.uri_sans, vec![spiffe_id.to_string()]);
    assert!(!info.is_ca);
    assert_eq!(info.digital_signature, Some(true));
    let eku = info.ext_key_usage.unwrap();
    assert!(eku.server_auth && eku.client_auth);
    // Certificate times have whole-second precision.
    let slack = time::Duration::seconds(1);
    assert!(info.not_before >= before - BACKDATE - slack && info.not_before <= after - BACKDATE);
    assert!(info.not_after >= before + ttl - slack && info.not_after <= after + ttl);
    assert_eq!((svid.not_before, svid.not_after), (info.not_before, info.not_after));

    let (_, cert) = X509Certificate::from_der(&svid.cert_chain[0]).unwrap();
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints present");
    assert!(!bc.value.ca);
    chains_to(&svid, ca.certificate()).unwrap();

    // A fresh key (and so a fresh serial) per SVID.
    let again = ca.issue(&spiffe_id, ttl).unwrap();
    assert_ne!(again.key.secret_der(), svid.key.secret_der());
    assert_ne!(again.serial, svid.serial);
}

#[test]
fn issue_refuses_other_trust_domains() {
    let dir = TempDir::new("ca-foreign");
    let ca = DevCa::init(dir.path(), &td("example.org"), false).unwrap();
    let err = ca.issue(&id("spiffe://other.org/a"), Duration::from_secs(60)).unwrap_err();
    assert!(matches!(err, Error::ForeignTrustDomain { .. }), "{err}");
}

#[test]
fn load_reports_missing_and_mismatched_files() {
    let dir = TempDir::new("ca-load");
    let err = DevCa::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("read CA certificate ") && msg.contains("ca.crt"), "{msg}");

    let other = TempDir::new("ca-load-other");
    DevCa::init(dir.path(), &td("example.org"), false).unwrap();
    DevCa::init(other.path(), &td("example.org"), false).unwrap();
    std::fs::copy(other.path().join(KEY_FILE), dir.path().join(KEY_FILE)).unwrap();
    let msg = DevCa::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("ca.key") && msg.contains("does not match"), "{msg}");

    std::fs::write(dir.path().join(CERT_FILE), "garbage").unwrap();
    let msg = DevCa::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("ca.crt") && msg.contains("no CERTIFICATE"), "{msg}");
}
