//! Certificate verifiers for X.509 SVIDs: chain validation against the source's *current* trust
//! bundle (rustls-webpki) plus the SPIFFE leaf rules (x509-parser).
//!
//! The leaf rules run before chain validation so that a rejection names the most specific
//! problem (an expired or foreign-domain certificate reports that, not "unknown issuer"). They
//! only ever reject; acceptance always requires the chain to validate.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError};
use rustls::{Error as TlsError, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::identity::{self, CertInfo, IdentitySource, SpiffeId, TrustDomain};

mod danger;

pub(crate) use danger::{ClientSvidVerifier, ServerSvidVerifier};

/// Why a peer certificate was rejected. Carried inside the rustls error
/// (`CertificateError::Other`), so it appears in the handshake error message.
///
/// `Debug` prints the same sentence as `Display`, because rustls formats
/// `CertificateError::Other` with `Debug`: the message then reads
/// "invalid peer certificate: Other(OtherError(peer certificate has 2 URI SANs; ...))".
#[derive(thiserror::Error)]
pub enum VerifyError {
    /// The certificate is not parseable DER X.509.
    #[error("peer certificate is malformed: {0}")]
    Malformed(String),
    /// Its validity ended before now.
    #[error("peer certificate expired at {not_after} (now {now})")]
    Expired {
        /// End of validity.
        not_after: OffsetDateTime,
        /// Verification time.
        now: OffsetDateTime,
    },
    /// Its validity starts after now.
    #[error("peer certificate is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity.
        not_before: OffsetDateTime,
        /// Verification time.
        now: OffsetDateTime,
    },
    /// The leaf has basicConstraints cA=true.
    #[error("peer leaf certificate is a CA certificate (basicConstraints CA:true)")]
    CaAsLeaf,
    /// The leaf has keyUsage without digitalSignature.
    #[error("peer certificate keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    /// The leaf has extendedKeyUsage without the one this side needs.
    #[error("peer certificate extendedKeyUsage lacks {needed}")]
    MissingEku {
        /// "serverAuth" or "clientAuth".
        needed: &'static str,
    },
    /// The leaf does not have exactly one URI SAN.
    #[error("peer certificate has {0} URI SANs; a SPIFFE SVID has exactly one")]
    UriSanCount(usize),
    /// The URI SAN is not a valid workload SPIFFE ID.
    #[error("peer certificate URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(identity::Error),
    /// The SPIFFE ID is outside the configured trust domain.
    #[error("peer SPIFFE ID {id} is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// The peer's ID.
        id: SpiffeId,
        /// The configured trust domain.
        expected: TrustDomain,
    },
    /// The source's bundle is for another trust domain, or empty.
    #[error("trust bundle unusable for trust domain {expected}: {reason}")]
    Bundle {
        /// The configured trust domain.
        expected: TrustDomain,
        /// What is wrong with it.
        reason: String,
    },
    /// The chain does not validate against the trust bundle.
    #[error("peer certificate chain does not verify against the trust bundle of {trust_domain}: {reason}")]
    UntrustedChain {
        /// The configured trust domain.
        trust_domain: TrustDomain,
        /// The rustls-webpki error (e.g. UnknownIssuer, BadSignature).
        reason: webpki::Error,
    },
}

impl fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Which side the peer certificate authenticates, i.e. which EKU it needs.
#[derive(Clone, Copy, Debug)]
enum PeerRole {
    Server,
    Client,
}

/// Verifies SVIDs against the configured trust domain and the source's current bundle.
pub(crate) struct SvidVerifier {
    source: Arc<dyn IdentitySource>,
    trust_domain: TrustDomain,
    provider: Arc<CryptoProvider>,
}

impl SvidVerifier {
    pub(crate) fn new(
        source: Arc<dyn IdentitySource>,
        trust_domain: TrustDomain,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self { source, trust_domain, provider }
    }

    /// Checks `end_entity` (+ `intermediates`) as a `role` certificate; returns its SPIFFE ID.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<SpiffeId, VerifyError> {
        let id = check_leaf(end_entity, now, role, &self.trust_domain)?;
        let bundle = self.source.bundle();
        let bundle_err = |reason: String| VerifyError::Bundle { expected: self.trust_domain.clone(), reason };
        if bundle.trust_domain != self.trust_domain {
            return Err(bundle_err(format!("it is for {}", bundle.trust_domain)));
        }
        let anchors = bundle
            .roots
            .iter()
            .filter_map(|root| match webpki::anchor_from_trusted_cert(root) {
                Ok(anchor) => Some(anchor),
                Err(e) => {
                    tracing::warn!(error = %e, trust_domain = %self.trust_domain, "skipping unparseable trust bundle root");
                    None
                }
            })
            .collect::<Vec<_>>();
        if anchors.is_empty() {
            return Err(bundle_err("it has no usable root".to_owned()));
        }
        let untrusted = |reason| VerifyError::UntrustedChain { trust_domain: self.trust_domain.clone(), reason };
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(untrusted)?;
        let usage = match role {
            PeerRole::Server => webpki::KeyUsage::server_auth(),
            PeerRole::Client => webpki::KeyUsage::client_auth(),
        };
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(untrusted)?;
        Ok(id)
    }

    /// Runs `verify`, logging and converting a rejection into a rustls error.
    fn verify_for_rustls(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<(), TlsError> {
        match self.verify(end_entity, intermediates, now, role) {
            Ok(id) => {
                tracing::debug!(spiffe_id = %id, peer_role = ?role, "verified peer SVID");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(reason = %e, peer_role = ?role, "rejected peer certificate");
                Err(TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))))
            }
        }
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The SPIFFE leaf rules, checked on the parsed leaf; returns the SPIFFE ID.
fn check_leaf(
    der: &CertificateDer<'_>,
    now: UnixTime,
    role: PeerRole,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, VerifyError> {
    let info = CertInfo::parse(der).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let now_time = || OffsetDateTime::from_unix_timestamp(now_secs).unwrap_or(info.not_after);
    if now_secs > info.not_after.unix_timestamp() {
        return Err(VerifyError::Expired { not_after: info.not_after, now: now_time() });
    }
    if now_secs < info.not_before.unix_timestamp() {
        return Err(VerifyError::NotYetValid { not_before: info.not_before, now: now_time() });
    }
    if info.is_ca {
        return Err(VerifyError::CaAsLeaf);
    }
    if info.digital_signature == Some(false) {
        return Err(VerifyError::NoDigitalSignature);
    }
    if let Some(eku) = info.ext_key_usage {
        let (has, needed) = match role {
            PeerRole::Server => (eku.server_auth, "serverAuth"),
            PeerRole::Client => (eku.client_auth, "clientAuth"),
        };
        if !has && !eku.any {
            return Err(VerifyError::MissingEku { needed });
        }
    }
    let uri = match info.uri_sans.as_slice() {
        [uri] => uri,
        sans => return Err(VerifyError::UriSanCount(sans.len())),
    };
    let id = SpiffeId::new(uri).map_err(VerifyError::InvalidSpiffeId)?;
    if !id.is_member_of(trust_domain) {
        return Err(VerifyError::ForeignTrustDomain { id, expected: trust_domain.clone() });
    }
    Ok(id)
}

impl fmt::Debug for SvidVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidVerifier").field("trust_domain", &self.trust_domain.as_str()).finish_non_exhaustive()
    }
}

/// Reads the SPIFFE ID of an already verified peer leaf (used after the handshake).
pub(crate) fn leaf_spiffe_id(der: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let info = CertInfo::parse(der).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    match info.uri_sans.as_slice() {
        [uri] => SpiffeId::new(uri).map_err(VerifyError::InvalidSpiffeId),
        sans => Err(VerifyError::UriSanCount(sans.len())),
    }
}
