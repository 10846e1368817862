//! X.509 SVIDs, trust bundles, and the certificate fields the agent reads.

use std::fmt;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{SpiffeId, TrustDomain};

/// An X.509 SVID: a workload's certificate chain (leaf first) and private key.
pub struct Svid {
    /// The identity in the leaf's single URI SAN.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then any intermediates.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Start of the leaf's validity.
    pub not_before: OffsetDateTime,
    /// End of the leaf's validity.
    pub not_after: OffsetDateTime,
    /// The leaf's serial number, lowercase hex (for logs, metrics and rotation checks).
    pub serial: String,
}

impl Svid {
    /// Builds an SVID from a chain and key, checking that the chain is not empty, the leaf has
    /// exactly one URI SAN holding a valid SPIFFE ID, and the key matches the leaf.
    /// The error is the reason, for the caller to wrap with its context.
    pub(crate) fn from_parts(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, String> {
        let leaf = cert_chain.first().ok_or("no certificate")?;
        let info = CertInfo::parse(leaf).map_err(|e| format!("parse leaf certificate: {e}"))?;
        let spiffe_id = info.spiffe_id()?;
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("load private key: {e}"))?;
        CertifiedKey::new(cert_chain.clone(), signing_key)
            .keys_match()
            .map_err(|e| format!("private key does not match the leaf certificate: {e}"))?;
        Ok(Self {
            spiffe_id,
            cert_chain,
            key,
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
        })
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.as_str())
            .field("serial", &self.serial)
            .field("chain_len", &self.cert_chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The CA certificates trusted for one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    /// The trust domain these roots speak for.
    pub trust_domain: TrustDomain,
    /// Trusted CA certificates (DER).
    pub roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// Extended key usages of a certificate, when it has the extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtKeyUsage {
    /// id-kp-serverAuth present.
    pub server_auth: bool,
    /// id-kp-clientAuth present.
    pub client_auth: bool,
    /// anyExtendedKeyUsage present.
    pub any: bool,
}

/// The fields of a certificate that the SVID rules look at, parsed with x509-parser.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Every URI SAN, in order.
    pub uri_sans: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// basicConstraints cA is true.
    pub is_ca: bool,
    /// Whether keyUsage includes digitalSignature; `None` when there is no keyUsage extension.
    pub digital_signature: Option<bool>,
    /// Extended key usages; `None` when there is no extendedKeyUsage extension.
    pub ext_key_usage: Option<ExtKeyUsage>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, X509Error> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| match e {
            x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
            x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
        })?;
        if !rest.is_empty() {
            return Err(X509Error::InvalidCertificate);
        }
        let uri_sans = match cert.subject_alternative_name()? {
            Some(san) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let is_ca = cert.basic_constraints()?.is_some_and(|bc| bc.value.ca);
        let digital_signature = cert.key_usage()?.map(|ku| ku.value.digital_signature());
        let ext_key_usage = cert.extended_key_usage()?.map(|eku| ExtKeyUsage {
            server_auth: eku.value.server_auth,
            client_auth: eku.value.client_auth,
            any: eku.value.any,
        });
        let serial = cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            serial,
            uri_sans,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca,
            digital_signature,
            ext_key_usage,
        })
    }

    /// The SPIFFE ID in the certificate's single URI SAN; the error is the reason it has none.
    pub(crate) fn spiffe_id(&self) -> Result<SpiffeId, String> {
        match self.uri_sans.as_slice() {
            [uri] => SpiffeId::new(uri).map_err(|e| e.to_string()),
            sans => Err(format!("certificate has {} URI SANs; a SPIFFE SVID has exactly one", sans.len())),
        }
    }
}
