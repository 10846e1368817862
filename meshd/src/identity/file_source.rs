//! [`FileSource`]: SVIDs read from the directories cert-manager's csi-driver-spiffe writes.
//!
//! Each identity has a directory holding `tls.crt` (leaf, then any intermediates), `tls.key`
//! and `ca.crt` (the trust bundle). Kubernetes volumes update such directories atomically by
//! writing a fresh `..<timestamp>` directory and swapping the `..data` symlink the files point
//! through; when `..data` exists, all three files are read through its resolved target, so one
//! load never mixes two generations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use super::{spawn_background, Error, IdentitySource, SpiffeId, Svid, TrustBundle, TrustDomain};

mod load;

use load::{load, read_snapshot, union_bundle, Loaded};

/// The leaf certificate (+ intermediates) file in an identity directory.
pub const CERT_FILE: &str = "tls.crt";
/// The private key file in an identity directory.
pub const KEY_FILE: &str = "tls.key";
/// The trust bundle file in an identity directory.
pub const BUNDLE_FILE: &str = "ca.crt";
/// The symlink Kubernetes atomic writers swap to publish a new generation.
const DATA_LINK: &str = "..data";
/// Pause after a change notification so that multi-file writes settle before reloading.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Settings of a [`FileSource`].
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// Trust domain every configured identity must belong to.
    pub trust_domain: TrustDomain,
    /// Each identity and the directory holding its files.
    pub identities: Vec<(SpiffeId, PathBuf)>,
    /// How often to re-read the files regardless of change notifications (default 5 s).
    pub poll_interval: Duration,
    /// Whether to watch the directories for changes (default true); polling always runs.
    pub watch_events: bool,
}

impl FileSourceConfig {
    /// A configuration with the default poll interval and event watching on.
    pub fn new(trust_domain: TrustDomain, identities: Vec<(SpiffeId, PathBuf)>) -> Self {
        Self { trust_domain, identities, poll_interval: Duration::from_secs(5), watch_events: true }
    }
}

/// An [`IdentitySource`] serving SVIDs from files, reloaded when they change.
///
/// A broken or partial update is logged (naming the file and the reason) and ignored: the
/// previous SVID and bundle stay in force until a complete, valid set appears. The bundle is
/// the union of the `ca.crt` roots of all directories.
pub struct FileSource {
    inner: Arc<Inner>,
    watcher: std::sync::Mutex<Option<RecommendedWatcher>>,
    task: AbortHandle,
}

struct Inner {
    trust_domain: TrustDomain,
    /// Grows when workloads are enrolled at runtime ([`FileSource::add`]).
    dirs: RwLock<Vec<(SpiffeId, PathBuf)>>,
    poll_interval: Duration,
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    wake: Arc<Notify>,
}

struct State {
    loaded: HashMap<SpiffeId, Loaded>,
    bundle: Arc<TrustBundle>,
    /// Last error logged per identity, so a persistent problem is logged once.
    last_error: HashMap<SpiffeId, String>,
}

impl FileSource {
    /// Loads every identity directory (failing if any is unusable), then starts watching and
    /// polling them; must run inside a tokio runtime.
    pub fn start(config: FileSourceConfig) -> Result<Arc<Self>, Error> {
        validate(&config)?;
        let mut loaded = HashMap::new();
        for (id, dir) in &config.identities {
            loaded.insert(id.clone(), load(id, read_snapshot(dir)?)?);
        }
        let bundle = union_bundle(&config.trust_domain, &config.identities, &loaded);
        let state = State { loaded, bundle: Arc::new(bundle), last_error: HashMap::new() };
        let inner = Arc::new(Inner {
            trust_domain: config.trust_domain,
            dirs: RwLock::new(config.identities),
            poll_interval: config.poll_interval,
            state: RwLock::new(state),
            changes: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
        });
        let watcher = if config.watch_events { Some(watch_dirs(&inner)?) } else { None };
        let task = spawn_background("file identity source", reload_loop(inner.clone()))?;
        Ok(Arc::new(Self { inner, watcher: std::sync::Mutex::new(watcher), task }))
    }

    /// Adds an identity at runtime (a workload enrolled after start-up): its folder must hold a
    /// usable SVID now; from then on it is watched and polled like the others.
    pub fn add(&self, id: SpiffeId, dir: PathBuf) -> Result<(), Error> {
        let bad = |reason: String| Error::Config { what: "file identity source", reason };
        if !id.is_member_of(&self.inner.trust_domain) {
            return Err(bad(format!("{id} is not in trust domain {}", self.inner.trust_domain)));
        }
        if self.inner.read_dirs().iter().any(|(other, _)| *other == id) {
            return Ok(());
        }
        let loaded = load(&id, read_snapshot(&dir)?)?;
        if let Some(w) = self.watcher.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            w.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| Error::Watch {
                target: format!("watch identity directory {}", dir.display()),
                source,
            })?;
        }
        self.inner.dirs.write().unwrap_or_else(|p| p.into_inner()).push((id.clone(), dir));
        let mut state = self.inner.state.write().unwrap_or_else(|p| p.into_inner());
        state.loaded.insert(id, loaded);
        state.bundle = Arc::new(union_bundle(&self.inner.trust_domain, &self.inner.read_dirs(), &state.loaded));
        drop(state);
        self.inner.changes.send_modify(|n| *n += 1);
        Ok(())
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdentitySource for FileSource {
    fn svid(&self, id: &SpiffeId) -> Result<Arc<Svid>, Error> {
        let state = self.inner.read_state();
        match state.loaded.get(id) {
            Some(loaded) => Ok(loaded.svid.clone()),
            None => Err(Error::UnknownIdentity { id: id.clone() }),
        }
    }

    fn bundle(&self) -> Arc<TrustBundle> {
        self.inner.read_state().bundle.clone()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn watch_identity(&self, id: &SpiffeId, dir: &Path) -> Result<(), Error> {
        self.add(id.clone(), dir.to_path_buf())
    }
}

impl Inner {
    fn read_dirs(&self) -> Vec<(SpiffeId, PathBuf)> {
        self.dirs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Writers replace whole entries, so a poisoned lock still holds consistent data.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads every directory and installs the ones that changed and are valid.
    fn reload(&self) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = 0u64;
        let dirs = self.read_dirs();
        for (id, dir) in &dirs {
            let result = read_snapshot(dir).and_then(|snapshot| {
                if state.loaded.get(id).is_some_and(|l| l.snapshot == snapshot) {
                    return Ok(None);
                }
                load(id, snapshot).map(Some)
            });
            match result {
                Ok(None) => {
                    state.last_error.remove(id);
                }
                Ok(Some(loaded)) => {
                    tracing::info!(spiffe_id = %id, serial = %loaded.svid.serial, not_after = %loaded.svid.not_after, "loaded new SVID from files");
                    state.loaded.insert(id.clone(), loaded);
                    state.last_error.remove(id);
                    changed += 1;
                }
                Err(e) => {
                    let message = e.to_string();
                    if state.last_error.get(id) != Some(&message) {
                        tracing::error!(spiffe_id = %id, error = %message, "ignoring identity file update; the previous SVID stays in force");
                        state.last_error.insert(id.clone(), message);
                    }
                }
            }
        }
        if changed > 0 {
            let bundle = union_bundle(&self.trust_domain, &dirs, &state.loaded);
            state.bundle = Arc::new(bundle);
            drop(state);
            self.changes.send_modify(|n| *n += changed);
        }
    }
}

fn validate(config: &FileSourceConfig) -> Result<(), Error> {
    let bad = |reason: String| Error::Config { what: "file identity source", reason };
    if config.poll_interval.is_zero() {
        return Err(bad("poll interval must be positive".to_owned()));
    }
    for (i, (id, _)) in config.identities.iter().enumerate() {
        if !id.is_member_of(&config.trust_domain) {
            return Err(bad(format!("{id} is not in trust domain {}", config.trust_domain)));
        }
        if config.identities[..i].iter().any(|(other, _)| other == id) {
            return Err(bad(format!("{id} is configured twice")));
        }
    }
    Ok(())
}

fn watch_dirs(inner: &Inner) -> Result<RecommendedWatcher, Error> {
    let wake = inner.wake.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Err(e) = &event {
            tracing::warn!(error = %e, "identity directory watch error; polling continues");
        }
        wake.notify_one();
    })
    .map_err(|source| Error::Watch { target: "create file watcher".to_owned(), source })?;
    for (_, dir) in &inner.read_dirs() {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| Error::Watch { target: format!("watch identity directory {}", dir.display()), source })?;
    }
    Ok(watcher)
}

async fn reload_loop(inner: Arc<Inner>) {
    let mut poll = tokio::time::interval(inner.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await; // The first tick is immediate; `start` has just loaded everything.
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            () = inner.wake.notified() => tokio::time::sleep(DEBOUNCE).await,
        }
        inner.reload();
    }
}

#[cfg(test)]
mod tests;
