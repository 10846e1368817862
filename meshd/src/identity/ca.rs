//! A development CA kept in two PEM files, for clusters without a real SPIFFE issuer.
//!
//! `ca.crt` is a self-signed ECDSA P-256 CA certificate whose URI SAN is the trust domain
//! (`spiffe://<td>`); `ca.key` is its PKCS#8 key, mode 0600.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::{pem, CertInfo, Error, SpiffeId, Svid, TrustBundle, TrustDomain};

/// File name of the CA certificate inside the CA directory.
pub const CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside the CA directory.
pub const KEY_FILE: &str = "ca.key";
/// How long a development CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back issued certificates are dated, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(60);

/// A development CA that issues X.509 SVIDs for one trust domain.
pub struct DevCa {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    /// Creates a new CA in `dir` (created if missing). Refuses to replace an existing
    /// `ca.crt` or `ca.key` unless `force` is set.
    pub fn init(dir: &Path, trust_domain: &TrustDomain, force: bool) -> Result<Self, Error> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if !force && (cert_path.exists() || key_path.exists()) {
            return Err(Error::CaExists { dir: dir.to_owned() });
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            what: "CA directory",
            path: dir.to_owned(),
            source,
        })?;
        let (ca, key, cert_pem) = Self::generate(trust_domain)?;
        pem::write("CA private key", &key_path, key.serialize_pem().as_bytes(), 0o600, force)?;
        pem::write("CA certificate", &cert_path, cert_pem.as_bytes(), 0o644, force)?;
        tracing::info!(dir = %dir.display(), trust_domain = %trust_domain, "created development CA");
        Ok(ca)
    }

    /// Loads the CA from `dir/ca.crt` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cert_pem = pem::read("CA certificate", &cert_path)?;
        let key_pem = pem::read("CA private key", &key_path)?;
        let bad_cert = |reason: String| Error::BadFile { what: "CA certificate", path: cert_path.clone(), reason };
        let cert = pem::certs("CA certificate", &cert_path, &cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| bad_cert("no certificate".to_owned()))?;
        let info = CertInfo::parse(&cert).map_err(|e| bad_cert(e.to_string()))?;
        if !info.is_ca {
            return Err(bad_cert("not a CA certificate".to_owned()));
        }
        let trust_domain = match info.uri_sans.as_slice() {
            [uri] => TrustDomain::new(uri).map_err(|e| bad_cert(e.to_string()))?,
            _ => return Err(bad_cert("needs exactly one URI SAN, spiffe://<trust-domain>".into())),
        };
        let key_text = String::from_utf8(key_pem).map_err(|_| Error::BadFile {
            what: "CA private key",
            path: key_path.clone(),
            reason: "not UTF-8 PEM".to_owned(),
        })?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| Error::BadFile {
            what: "CA private key",
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        if key.subject_public_key_info() != public_key_of(&cert).map_err(bad_cert)? {
            return Err(Error::BadFile {
                what: "CA private key",
                path: key_path,
                reason: format!("does not match {}", cert_path.display()),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Self { trust_domain, cert, issuer })
    }

    /// Generates a CA in memory; also returns its key and PEM certificate for `init` to store.
    fn generate(trust_domain: &TrustDomain) -> Result<(Self, KeyPair, String), Error> {
        let op = || format!("generate development CA for {trust_domain}");
        let rcgen_err = |source| Error::Rcgen { op: op(), source };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "meshd");
        // A name unique to this CA (from its key): path building matches issuers by name, and
        // two dev CAs sharing a name would turn "unknown issuer" into "bad signature".
        let key_id: String = params.key_identifier(&key).iter().take(6).map(|b| format!("{b:02x}")).collect();
        params.distinguished_name.push(DnType::CommonName, format!("meshd development CA {key_id}"));
        params.subject_alt_names = vec![san_uri(&trust_domain.uri()).map_err(rcgen_err)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        let issuer_key = KeyPair::from_pem(&key.serialize_pem()).map_err(rcgen_err)?;
        let ca = Self {
            trust_domain: trust_domain.clone(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, issuer_key),
        };
        Ok((ca, key, cert.pem()))
    }

    /// Issues an SVID for `id`, valid from one minute ago until `ttl` from now, with a fresh
    /// P-256 key. `id` must be in the CA's trust domain.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, Error> {
        if !id.is_member_of(&self.trust_domain) {
            return Err(Error::ForeignTrustDomain { id: id.clone(), trust_domain: self.trust_domain.clone() });
        }
        let op = || format!("issue SVID for {id}");
        let rcgen_err = |source| Error::Rcgen { op: op(), source };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "meshd");
        params.subject_alt_names = vec![san_uri(id.as_str()).map_err(rcgen_err)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Svid::from_parts(vec![cert.der().clone()], key_der).map_err(|reason| Error::BadCertificate { op: op(), reason })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A trust bundle holding just this CA.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle { trust_domain: self.trust_domain.clone(), roots: vec![self.cert.clone()] }
    }

    /// Signs arbitrary certificate parameters with this CA (tests build bad certificates).
    #[cfg(test)]
    pub(crate) fn sign(&self, params: &CertificateParams, key: &KeyPair) -> CertificateDer<'static> {
        params.signed_by(key, &self.issuer).expect("sign test certificate").der().clone()
    }
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").field("trust_domain", &self.trust_domain.as_str()).finish_non_exhaustive()
    }
}

fn san_uri(uri: &str) -> Result<SanType, rcgen::Error> {
    Ok(SanType::URI(uri.try_into()?))
}

/// The SubjectPublicKeyInfo DER of a certificate.
fn public_key_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    Ok(parsed.public_key().raw.to_vec())
}

#[cfg(test)]
mod tests;
