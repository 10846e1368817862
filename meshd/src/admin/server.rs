//! The server side: accepts admin connections and hands each request to the agent.

use std::{
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use super::{protocol::MAX_REQUEST, Error, Request, Response};

/// What answers admin requests (the running agent).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// Binds the admin socket at `path` (replacing a stale one), mode 0600 in a 0700 folder.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let bind_err = |source| Error::Bind { path: path.into(), source };
    // A folder meshd creates is its own (0700); one that exists is left as it is (the socket
    // itself is 0600).
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(bind_err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale admin socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves admin requests until the listener fails or the task is dropped.
pub async fn serve<H: Handler>(listener: UnixListener, path: PathBuf, handler: Arc<H>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, handler).await {
                        warn!(error = %e, "admin request failed");
                    }
                });
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "admin socket accept failed");
                return;
            }
        }
    }
}

async fn answer<H: Handler>(mut stream: UnixStream, handler: Arc<H>) -> std::io::Result<()> {
    let mut body = Vec::new();
    (&mut stream).take(MAX_REQUEST + 1).read_to_end(&mut body).await?;
    let response = if body.len() as u64 > MAX_REQUEST {
        Response::err(format!("request larger than {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&body) {
            Ok(request) => handler.handle(request).await,
            Err(e) => Response::err(format!("malformed admin request: {e}")),
        }
    };
    let out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.shutdown().await
}
