//! The HTTP client the OTLP exporter sends with. The SDK's batch processor exports from its
//! own thread, outside the tokio runtime, while hyper needs the runtime: each request is
//! spawned onto the agent's runtime and awaited from the exporter's thread.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use opentelemetry_http::{hyper::HyperClient, HttpClient, HttpError, Request, Response};

#[derive(Debug, Clone)]
pub struct RuntimeClient {
    inner: Arc<HyperClient>,
    runtime: tokio::runtime::Handle,
}

impl RuntimeClient {
    /// A client bound to the current tokio runtime (call from inside it).
    pub fn new(timeout: Duration) -> Result<Self, tokio::runtime::TryCurrentError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let _entered = runtime.enter();
        Ok(Self { inner: Arc::new(HyperClient::with_default_connector(timeout, None)), runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = Arc::clone(&self.inner);
        match self.runtime.spawn(async move { inner.send_bytes(request).await }).await {
            Ok(result) => result,
            Err(e) => Err(Box::new(e)),
        }
    }
}
