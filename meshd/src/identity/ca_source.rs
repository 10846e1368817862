//! [`CaSource`]: SVIDs issued on demand by a [`DevCa`] and renewed in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{spawn_background, DevCa, Error, IdentitySource, SpiffeId, Svid, TrustBundle};

/// Settings of a [`CaSource`].
#[derive(Clone, Debug)]
pub struct CaSourceConfig {
    /// Lifetime of issued SVIDs (default one hour).
    pub ttl: Duration,
    /// Fraction of an SVID's lifetime after which it is renewed, in (0, 1) (default 0.5).
    pub renew_fraction: f64,
}

impl Default for CaSourceConfig {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(3600), renew_fraction: 0.5 }
    }
}

/// An [`IdentitySource`] that issues SVIDs from a development CA on first request, caches them,
/// and renews each once `renew_fraction` of its lifetime has passed.
///
/// The background renewal task stops when the source is dropped.
pub struct CaSource {
    inner: Arc<Inner>,
    renewal: AbortHandle,
}

struct Inner {
    ca: DevCa,
    config: CaSourceConfig,
    bundle: Arc<TrustBundle>,
    cache: Mutex<HashMap<SpiffeId, Cached>>,
    changes: watch::Sender<u64>,
    /// Wakes the renewal task when a new SVID enters the cache.
    wake: Notify,
}

struct Cached {
    svid: Arc<Svid>,
    renew_at: Instant,
}

impl CaSource {
    /// Creates the source and starts its renewal task; must run inside a tokio runtime.
    pub fn start(ca: DevCa, config: CaSourceConfig) -> Result<Arc<Self>, Error> {
        if config.ttl.is_zero() || !(config.renew_fraction > 0.0 && config.renew_fraction < 1.0) {
            return Err(Error::Config {
                what: "CA identity source",
                reason: format!(
                    "ttl must be positive and renew_fraction in (0, 1), got {:?} and {}",
                    config.ttl, config.renew_fraction
                ),
            });
        }
        let (changes, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            bundle: Arc::new(ca.bundle()),
            ca,
            config,
            cache: Mutex::new(HashMap::new()),
            changes,
            wake: Notify::new(),
        });
        let renewal = spawn_background("CA identity source", renew_loop(inner.clone()))?;
        Ok(Arc::new(Self { inner, renewal }))
    }

    /// Issues a new SVID for `id` now, replacing the cached one, and bumps `changes`.
    /// Used by tests and operators to force a rotation.
    pub fn rotate(&self, id: &SpiffeId) -> Result<Arc<Svid>, Error> {
        let mut cache = self.inner.lock_cache();
        let svid = self.inner.issue_into(&mut cache, id)?;
        drop(cache);
        self.inner.changes.send_modify(|n| *n += 1);
        tracing::info!(spiffe_id = %id, serial = %svid.serial, "rotated SVID on request");
        Ok(svid)
    }
}

impl Drop for CaSource {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl IdentitySource for CaSource {
    fn svid(&self, id: &SpiffeId) -> Result<Arc<Svid>, Error> {
        let mut cache = self.inner.lock_cache();
        if let Some(cached) = cache.get(id) {
            return Ok(cached.svid.clone());
        }
        let svid = self.inner.issue_into(&mut cache, id)?;
        tracing::info!(spiffe_id = %id, serial = %svid.serial, not_after = %svid.not_after, "issued SVID");
        Ok(svid)
    }

    fn bundle(&self) -> Arc<TrustBundle> {
        self.inner.bundle.clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

impl Inner {
    fn lock_cache(&self) -> MutexGuard<'_, HashMap<SpiffeId, Cached>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts).
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues an SVID for `id` and caches it, scheduling its renewal.
    fn issue_into(&self, cache: &mut HashMap<SpiffeId, Cached>, id: &SpiffeId) -> Result<Arc<Svid>, Error> {
        let svid = Arc::new(self.ca.issue(id, self.config.ttl)?);
        let renew_at = Instant::now() + self.config.ttl.mul_f64(self.config.renew_fraction);
        cache.insert(id.clone(), Cached { svid: svid.clone(), renew_at });
        self.wake.notify_one();
        Ok(svid)
    }

    fn next_renewal(&self) -> Option<Instant> {
        self.lock_cache().values().map(|c| c.renew_at).min()
    }

    /// Renews every SVID whose renewal time has come.
    fn renew_due(&self) {
        let now = Instant::now();
        let mut cache = self.lock_cache();
        let due: Vec<SpiffeId> = cache.iter().filter(|(_, c)| c.renew_at <= now).map(|(id, _)| id.clone()).collect();
        for id in due {
            match self.issue_into(&mut cache, &id) {
                Ok(svid) => {
                    self.changes.send_modify(|n| *n += 1);
                    tracing::info!(spiffe_id = %id, serial = %svid.serial, not_after = %svid.not_after, "renewed SVID");
                }
                Err(e) => {
                    // Keep serving the current SVID and retry soon.
                    let retry = (self.config.ttl / 10).min(Duration::from_secs(30));
                    if let Some(c) = cache.get_mut(&id) {
                        c.renew_at = now + retry;
                    }
                    tracing::error!(spiffe_id = %id, error = %e, retry_in = ?retry, "SVID renewal failed");
                }
            }
        }
    }
}

async fn renew_loop(inner: Arc<Inner>) {
    loop {
        match inner.next_renewal() {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => inner.renew_due(),
                    () = inner.wake.notified() => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testutil::TempDir;
    use crate::identity::TrustDomain;

    fn source(dir: &TempDir, config: CaSourceConfig) -> Arc<CaSource> {
        let td = TrustDomain::new("example.org").unwrap();
        let ca = DevCa::init(dir.path(), &td, false).unwrap();
        CaSource::start(ca, config).unwrap()
    }

    #[tokio::test]
    async fn caches_and_force_rotates() {
        let dir = TempDir::new("casource-rotate");
        let src = source(&dir, CaSourceConfig::default());
        let id = SpiffeId::new("spiffe://example.org/a").unwrap();
        let mut changes = src.changes();
        let first = src.svid(&id).unwrap();
        assert!(Arc::ptr_eq(&first, &src.svid(&id).unwrap()), "cached");
        let rotated = src.rotate(&id).unwrap();
        assert_ne!(rotated.serial, first.serial);
        assert_eq!(src.svid(&id).unwrap().serial, rotated.serial);
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 1);
        let other = SpiffeId::new("spiffe://other.org/a").unwrap();
        assert!(matches!(src.svid(&other), Err(Error::ForeignTrustDomain { .. })));
        assert_eq!(src.bundle().roots.len(), 1);
    }

    #[tokio::test]
    async fn renews_after_the_configured_fraction() {
        let dir = TempDir::new("casource-renew");
        let config = CaSourceConfig { ttl: Duration::from_secs(2), renew_fraction: 0.5 };
        let src = source(&dir, config);
        let id = SpiffeId::new("spiffe://example.org/a").unwrap();
        let mut changes = src.changes();
        let issued_at = std::time::Instant::now();
        let first = src.svid(&id).unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.expect("renewal within 10 s").unwrap();
        let elapsed = issued_at.elapsed();
        assert!(elapsed >= Duration::from_millis(900), "renewed too early: {elapsed:?}");
        let renewed = src.svid(&id).unwrap();
        assert_ne!(renewed.serial, first.serial);
        assert!(renewed.not_after >= first.not_after);
    }

    #[tokio::test]
    async fn rejects_bad_config() {
        let dir = TempDir::new("casource-config");
        let td = TrustDomain::new("example.org").unwrap();
        let ca = DevCa::init(dir.path(), &td, false).unwrap();
        let config = CaSourceConfig { ttl: Duration::from_secs(60), renew_fraction: 1.5 };
        assert!(matches!(CaSource::start(ca, config), Err(Error::Config { .. })));
    }
}
