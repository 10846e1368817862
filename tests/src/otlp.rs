//! An in-process OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf), decodes the spans
//! with the OpenTelemetry protocol's own message types and keeps them for the test to inspect.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, AnyValue},
};
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes (`service.name`, `meshd.node`).
    pub resource: BTreeMap<String, String>,
}

/// The receiver; it serves until the process ends.
#[derive(Clone, Default)]
pub struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Receiver {
    /// Serves OTLP on `listener` (a blocking listener) from a background thread.
    pub fn serve(&self, listener: TcpListener) {
        let spans = Arc::clone(&self.spans);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let spans = Arc::clone(&spans);
                std::thread::spawn(move || {
                    let _ = answer(conn, &spans);
                });
            }
        });
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }
}

fn answer(mut conn: std::net::TcpStream, spans: &Mutex<Vec<Span>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut len = 0usize;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let post_traces = line.starts_with("POST /v1/traces ");
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let status = match (post_traces, ExportTraceServiceRequest::decode(body.as_slice())) {
        (true, Ok(req)) => {
            let mut out = spans.lock().expect("spans");
            for rs in req.resource_spans {
                let resource: BTreeMap<String, String> = rs
                    .resource
                    .map(|r| r.attributes.into_iter().map(|kv| (kv.key, text(&kv.value))).collect())
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(Span {
                            name: s.name,
                            trace_id: s.trace_id,
                            span_id: s.span_id,
                            parent_span_id: s.parent_span_id,
                            attributes: s.attributes.into_iter().map(|kv| (kv.key, text(&kv.value))).collect(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
            "200 OK"
        }
        _ => "400 Bad Request",
    };
    conn.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}
