//! rustls configurations for mesh connections between agents.
//!
//! Both sides speak TLS 1.3 only, with AES-GCM suites (what kernel TLS offloads), ALPN
//! `meshd/1`, mutual authentication with X.509 SVIDs, secret extraction enabled (keys are
//! handed to kernel TLS after the handshake), and no session tickets or resumption (no
//! post-handshake messages to confuse that hand-off).
//!
//! The configs never need rebuilding on rotation: the certificate resolvers ask the
//! [`IdentitySource`] for the current SVID at every handshake and the verifiers read its
//! current bundle at every verification. Established connections keep their keys.
//!
//! Layout: [`verify`] holds the SVID verifiers and [`VerifyError`]; `resolve` the resolvers.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig};

use crate::identity::{self, IdentitySource, SpiffeId, TrustDomain};

mod resolve;
pub mod verify;

pub use verify::VerifyError;

use resolve::{ClientSvidResolver, CurrentKey, ServerSvidResolver};
use verify::{ClientSvidVerifier, ServerSvidVerifier, SvidVerifier};

/// The ALPN protocol name of agent-to-agent connections; required on both sides.
pub const ALPN: &[u8] = b"meshd/1";

/// Errors of the TLS module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rustls refused the configuration.
    #[error("build TLS {side} config for {local}: {source}")]
    Build {
        /// "client" or "server".
        side: &'static str,
        /// The local identity.
        local: SpiffeId,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The local identity has no usable SVID.
    #[error("build TLS {side} config for {local}: {source}")]
    LocalSvid {
        /// "client" or "server".
        side: &'static str,
        /// The local identity.
        local: SpiffeId,
        /// Why the source could not provide it.
        source: Box<identity::Error>,
    },
    /// The local identity is outside the configured trust domain.
    #[error("build TLS {side} config for {local}: not in trust domain {trust_domain}")]
    ForeignLocalIdentity {
        /// "client" or "server".
        side: &'static str,
        /// The local identity.
        local: SpiffeId,
        /// The configured trust domain.
        trust_domain: TrustDomain,
    },
    /// The connection has no peer certificate (handshake not finished).
    #[error("read peer identity: no peer certificate (handshake not complete)")]
    NoPeerCertificate,
    /// The peer did not agree on ALPN `meshd/1`.
    #[error("read peer identity: negotiated ALPN {got}, expected meshd/1")]
    Alpn {
        /// What was negotiated ("none" if nothing).
        got: String,
    },
    /// The peer leaf does not carry a SPIFFE ID.
    #[error("read peer identity: {0}")]
    PeerCertificate(VerifyError),
}

/// The ring provider restricted to the TLS 1.3 AES-GCM suites (kernel TLS offloads those).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites =
        vec![ring::cipher_suite::TLS13_AES_256_GCM_SHA384, ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(provider)
}

/// Client config for connections made on behalf of `local`, trusting peers of `trust_domain`
/// per `source`'s current bundle. Fails if `source` cannot provide `local`'s SVID now.
pub fn client_config(
    source: Arc<dyn IdentitySource>,
    local: SpiffeId,
    trust_domain: TrustDomain,
) -> Result<Arc<ClientConfig>, Error> {
    let side = "client";
    check_local(side, source.as_ref(), &local, &trust_domain)?;
    let provider = provider();
    let verifier = SvidVerifier::new(source.clone(), trust_domain, provider.clone());
    let resolver = ClientSvidResolver(CurrentKey::new(source, local.clone(), provider.clone()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Build { side, local, source })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerSvidVerifier(verifier)))
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_secret_extraction = true;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Server config for connections accepted on behalf of `local`, requiring client SVIDs of
/// `trust_domain` per `source`'s current bundle. Fails if `source` cannot provide `local`'s
/// SVID now.
pub fn server_config(
    source: Arc<dyn IdentitySource>,
    local: SpiffeId,
    trust_domain: TrustDomain,
) -> Result<Arc<ServerConfig>, Error> {
    let side = "server";
    check_local(side, source.as_ref(), &local, &trust_domain)?;
    let provider = provider();
    let verifier = SvidVerifier::new(source.clone(), trust_domain, provider.clone());
    let resolver = ServerSvidResolver(CurrentKey::new(source, local.clone(), provider.clone()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| Error::Build { side, local, source })?
        .with_client_cert_verifier(Arc::new(ClientSvidVerifier(verifier)))
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The verified peer's SPIFFE ID once the handshake is complete. Also checks that ALPN
/// `meshd/1` was negotiated (a server that ignores ALPN is only caught here), so callers must
/// call this before using a connection.
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, Error> {
    let leaf = conn.peer_certificates().and_then(|certs| certs.first()).ok_or(Error::NoPeerCertificate)?;
    if conn.alpn_protocol() != Some(ALPN) {
        let got = conn.alpn_protocol().map_or_else(|| "none".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
        return Err(Error::Alpn { got });
    }
    verify::leaf_spiffe_id(leaf).map_err(Error::PeerCertificate)
}

fn check_local(
    side: &'static str,
    source: &dyn IdentitySource,
    local: &SpiffeId,
    trust_domain: &TrustDomain,
) -> Result<(), Error> {
    if !local.is_member_of(trust_domain) {
        return Err(Error::ForeignLocalIdentity { side, local: local.clone(), trust_domain: trust_domain.clone() });
    }
    source.svid(local).map(|_| ()).map_err(|source| Error::LocalSvid {
        side,
        local: local.clone(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests;
