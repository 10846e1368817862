//! Logging and traces.
//!
//! Logs go to stderr as text or JSON (`--log-format json`: every field of the access-log lines,
//! `target: meshd::access`, is a JSON field). Each flow is a tracing span (`flow`, INFO) with
//! child spans `handshake`, `authorization` and `data` (DEBUG); with an `otlp` section in the
//! configuration, these spans are exported over OTLP/HTTP (protobuf) in batches. Without it
//! the OpenTelemetry layer is not installed, and the DEBUG child spans are disabled at their
//! call sites: no cost when off.

mod client;

use opentelemetry::{trace::TracerProvider as _, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
    Resource,
};
use tracing::{Level, Metadata};
use tracing_subscriber::{filter::filter_fn, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

use crate::{cli::LogFormat, config::Otlp};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTLP export to {endpoint}: {message}")]
    Otlp { endpoint: String, message: String },
    #[error("install the log subscriber: {0}")]
    Init(String),
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes what is still batched.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still batched and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("meshd: flush OTLP spans: {e}");
            }
        }
    }
}

/// The OTLP traces URL for a collector base URL.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.into()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Builds the OTLP trace pipeline (must run inside the tokio runtime).
pub fn tracer_provider(otlp: &Otlp, node: &str) -> Result<SdkTracerProvider, Error> {
    let url = traces_url(&otlp.endpoint);
    let fail = |message: String| Error::Otlp { endpoint: url.clone(), message };
    let client = client::RuntimeClient::new(std::time::Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let batch = BatchConfigBuilder::default().with_scheduled_delay(otlp.export_interval).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let resource = Resource::builder()
        .with_service_name("meshd")
        .with_attribute(KeyValue::new("meshd.node", node.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

/// What the OpenTelemetry layer sees: meshd's spans (down to DEBUG) and its INFO+ events.
fn exported(m: &Metadata<'_>) -> bool {
    m.target().starts_with("meshd") && (*m.level() <= Level::INFO || (m.is_span() && *m.level() <= Level::DEBUG))
}

/// Installs the global subscriber: logs to stderr, plus OTLP export when `otlp` is given
/// (`node` names this agent in the exported resource).
pub fn init(format: LogFormat, otlp: Option<(&Otlp, &str)>) -> Result<Telemetry, Error> {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
    };
    let provider = otlp.map(|(o, node)| tracer_provider(o, node)).transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("meshd")).with_filter(filter_fn(exported)));
    tracing_subscriber::registry()
        .with(fmt.with_filter(env))
        .with(otel)
        .try_init()
        .map_err(|e| Error::Init(e.to_string()))?;
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests;
