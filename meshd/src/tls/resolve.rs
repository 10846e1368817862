//! Certificate resolvers that present the source's *current* SVID at every handshake.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::ALPN;
use crate::identity::{IdentitySource, SpiffeId, Svid};

/// The local identity's current SVID as a rustls `CertifiedKey`, rebuilt only when the source
/// hands out a different SVID.
pub(crate) struct CurrentKey {
    source: Arc<dyn IdentitySource>,
    local: SpiffeId,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Option<(Arc<Svid>, Arc<CertifiedKey>)>>,
}

impl CurrentKey {
    pub(crate) fn new(source: Arc<dyn IdentitySource>, local: SpiffeId, provider: Arc<CryptoProvider>) -> Self {
        Self { source, local, provider, cached: Mutex::new(None) }
    }

    /// The key to present now, or `None` (logged) if the source cannot provide one.
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        let svid = match self.source.svid(&self.local) {
            Ok(svid) => svid,
            Err(e) => {
                tracing::error!(spiffe_id = %self.local, error = %e, "no SVID to present in TLS handshake");
                return None;
            }
        };
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_svid, key)) = cached.as_ref() {
            if Arc::ptr_eq(cached_svid, &svid) {
                return Some(key.clone());
            }
        }
        let signing_key = match self.provider.key_provider.load_private_key(svid.key.clone_key()) {
            Ok(key) => key,
            Err(e) => {
                tracing::error!(spiffe_id = %self.local, serial = %svid.serial, error = %e, "load SVID private key for TLS");
                return None;
            }
        };
        let key = Arc::new(CertifiedKey::new(svid.cert_chain.clone(), signing_key));
        tracing::debug!(spiffe_id = %self.local, serial = %svid.serial, "presenting new SVID");
        *cached = Some((svid, key.clone()));
        Some(key)
    }
}

impl fmt::Debug for CurrentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentKey").field("local", &self.local.as_str()).finish_non_exhaustive()
    }
}

/// Client certificate resolver: always the local identity's current SVID.
#[derive(Debug)]
pub(crate) struct ClientSvidResolver(pub(crate) CurrentKey);

impl ResolvesClientCert for ClientSvidResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server certificate resolver: the local identity's current SVID, only for clients that
/// offer ALPN `meshd/1` (rustls itself accepts clients that offer no ALPN at all).
#[derive(Debug)]
pub(crate) struct ServerSvidResolver(pub(crate) CurrentKey);

impl ResolvesServerCert for ServerSvidResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offers_meshd = client_hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ALPN));
        if !offers_meshd {
            tracing::warn!(spiffe_id = %self.0.local, "rejecting TLS client that does not offer ALPN meshd/1");
            return None;
        }
        self.0.get()
    }
}
