//! Admin requests and responses. The response body of `status` is the stable JSON printed by
//! `meshd status --json`.

use serde::{Deserialize, Serialize};

use crate::config::WorkloadConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Enroll { workload: WorkloadConfig },
    Unenroll { name: String },
    PolicyApply { path: String, text: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub body: serde_json::Value,
}

impl Response {
    pub fn ok(body: serde_json::Value) -> Self {
        Self { ok: true, error: None, body }
    }
    pub fn err(message: impl Into<String>) -> Self {
        Self { ok: false, error: Some(message.into()), body: serde_json::Value::Null }
    }
}

/// Largest request the agent reads (a policy file travels inside one).
pub const MAX_REQUEST: u64 = 16 << 20;
