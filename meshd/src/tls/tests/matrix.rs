//! Bad certificates, each rejected for its own reason, in both directions.

use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use super::support::{exchange, id, td, verify_reason, Exchange, Pki, SettableSource};
use crate::identity::{IdentitySource, Svid};
use crate::tls::{client_config, server_config, VerifyError};

/// Which side presents the bad certificate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Presenter {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug)]
enum Bad {
    Expired,
    NotYetValid,
    OtherCa,
    OtherTrustDomain,
    NoUriSan,
    TwoUriSans,
    InvalidSpiffeId,
    CaAsLeaf,
    NoDigitalSignature,
    MissingEku,
}

const ALL: [Bad; 10] = [
    Bad::Expired,
    Bad::NotYetValid,
    Bad::OtherCa,
    Bad::OtherTrustDomain,
    Bad::NoUriSan,
    Bad::TwoUriSans,
    Bad::InvalidSpiffeId,
    Bad::CaAsLeaf,
    Bad::NoDigitalSignature,
    Bad::MissingEku,
];

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

impl Bad {
    /// The bad SVID, signed by `pki`'s CA (or by `other` for `OtherCa`).
    fn svid(self, pki: &Pki, other: &Pki, presenter: Presenter) -> Svid {
        let now = OffsetDateTime::now_utc();
        let signer = if matches!(self, Bad::OtherCa) { other } else { pki };
        signer.custom_svid(|p| match self {
            Bad::Expired => {
                p.not_before = now - Duration::hours(2);
                p.not_after = now - Duration::hours(1);
            }
            Bad::NotYetValid => {
                p.not_before = now + Duration::hours(1);
                p.not_after = now + Duration::hours(2);
            }
            Bad::OtherCa => {}
            Bad::OtherTrustDomain => p.subject_alt_names = vec![uri("spiffe://other.org/x")],
            Bad::NoUriSan => p.subject_alt_names = vec![SanType::DnsName("x.example.org".try_into().unwrap())],
            Bad::TwoUriSans => {
                p.subject_alt_names = vec![uri("spiffe://example.org/one"), uri("spiffe://example.org/two")]
            }
            Bad::InvalidSpiffeId => p.subject_alt_names = vec![uri("spiffe://example.org/a//b")],
            Bad::CaAsLeaf => {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
            }
            Bad::NoDigitalSignature => p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
            Bad::MissingEku => {
                p.extended_key_usages = vec![match presenter {
                    // A client certificate that is only good for servers, and vice versa.
                    Presenter::Client => ExtendedKeyUsagePurpose::ServerAuth,
                    Presenter::Server => ExtendedKeyUsagePurpose::ClientAuth,
                }]
            }
        })
    }

    /// Whether `e` is the specific rejection this certificate deserves.
    fn expected(self, e: &VerifyError, presenter: Presenter) -> bool {
        match (self, e) {
            (Bad::Expired, VerifyError::Expired { .. })
            | (Bad::NotYetValid, VerifyError::NotYetValid { .. })
            | (Bad::CaAsLeaf, VerifyError::CaAsLeaf)
            | (Bad::NoDigitalSignature, VerifyError::NoDigitalSignature)
            | (Bad::InvalidSpiffeId, VerifyError::InvalidSpiffeId(_)) => true,
            (Bad::OtherCa, VerifyError::UntrustedChain { reason, .. }) => *reason == webpki::Error::UnknownIssuer,
            (Bad::OtherTrustDomain, VerifyError::ForeignTrustDomain { id, .. }) => {
                id.as_str() == "spiffe://other.org/x"
            }
            (Bad::NoUriSan, VerifyError::UriSanCount(0)) | (Bad::TwoUriSans, VerifyError::UriSanCount(2)) => true,
            (Bad::MissingEku, VerifyError::MissingEku { needed }) => {
                *needed
                    == match presenter {
                        Presenter::Client => "clientAuth",
                        Presenter::Server => "serverAuth",
                    }
            }
            _ => false,
        }
    }
}

/// One attempted connection where `presenter` uses the bad certificate and the other side is
/// a correctly configured peer.
async fn attempt(bad: Bad, presenter: Presenter) -> Exchange {
    let pki = Pki::new("tls-matrix");
    let other = Pki::new("tls-matrix-other");
    let good = pki.ca_source();
    let bad_source = SettableSource::new(bad.svid(&pki, &other, presenter), good.bundle().as_ref().clone());
    let (client_source, server_source): (std::sync::Arc<dyn IdentitySource>, std::sync::Arc<dyn IdentitySource>) =
        match presenter {
            Presenter::Client => (bad_source, good),
            Presenter::Server => (good, bad_source),
        };
    let client = client_config(client_source, id("client"), td()).unwrap();
    let server = server_config(server_source, id("server"), td()).unwrap();
    exchange(client, server).await
}

fn check(bad: Bad, presenter: Presenter, ex: &Exchange) {
    let what = format!("{bad:?} certificate presented by the {presenter:?}");
    // The verifying side fails with the precise reason, visible in the error message.
    let err = match presenter {
        Presenter::Client => ex.server_err.as_ref(),
        Presenter::Server => ex.client_err.as_ref(),
    };
    let err = err.unwrap_or_else(|| panic!("{what}: accepted"));
    eprintln!("{what}: {err}");
    let reason = verify_reason(err).unwrap_or_else(|| panic!("{what}: no VerifyError in {err}"));
    assert!(bad.expected(reason, presenter), "{what}: wrong reason: {reason}");
    assert!(err.to_string().contains(&reason.to_string()), "{what}: message {err}");
    // Neither application saw a byte, and neither learnt a peer identity on the verifying side.
    assert!(ex.server_got.is_empty(), "{what}: server app received {:?}", ex.server_got);
    assert!(ex.client_got.is_empty(), "{what}: client app received {:?}", ex.client_got);
    match presenter {
        Presenter::Client => assert!(ex.server_peer.is_none(), "{what}"),
        Presenter::Server => assert!(ex.client_peer.is_none(), "{what}"),
    }
}

#[tokio::test]
async fn bad_client_certificates_are_rejected_by_the_server() {
    for bad in ALL {
        check(bad, Presenter::Client, &attempt(bad, Presenter::Client).await);
    }
}

#[tokio::test]
async fn bad_server_certificates_are_rejected_by_the_client() {
    for bad in ALL {
        check(bad, Presenter::Server, &attempt(bad, Presenter::Server).await);
    }
}

#[tokio::test]
async fn the_bad_certificate_builder_can_build_a_good_one() {
    // Guards the matrix: the same builder without a defect is accepted both ways, so each
    // rejection above is caused by its defect alone.
    let pki = Pki::new("tls-matrix-control");
    let good = pki.ca_source();
    let custom = SettableSource::new(pki.custom_svid(|_| {}), good.bundle().as_ref().clone());
    for (c, s) in [
        (custom.clone() as std::sync::Arc<dyn IdentitySource>, good.clone() as _),
        (good.clone() as _, custom.clone() as _),
    ] {
        let ex = exchange(client_config(c, id("client"), td()).unwrap(), server_config(s, id("server"), td()).unwrap())
            .await;
        assert!(ex.client_err.is_none() && ex.server_err.is_none(), "{:?} {:?}", ex.client_err, ex.server_err);
        assert!(!ex.server_got.is_empty() && !ex.client_got.is_empty());
    }
}
