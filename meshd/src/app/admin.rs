//! Answers admin-socket requests.

use std::sync::Arc;

use serde_json::json;

use super::Agent;
use crate::admin::{server::Handler, Request, Response};

impl Handler for Agent {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(self.status()),
            Request::Unenroll { name } => match self.unenroll(&name) {
                Ok(()) => Response::ok(json!({ "unenrolled": name })),
                Err(e) => Response::err(e.to_string()),
            },
            Request::Enroll { workload } => {
                // `enroll` needs the agent as an Arc (its listener tasks keep it alive).
                let Some(this) = self.self_arc() else {
                    return Response::err("the agent is shutting down");
                };
                let name = workload.name.clone();
                match this.enroll(workload).await {
                    Ok(w) => Response::ok(json!({ "enrolled": name, "spiffe_id": w.spiffe_id.as_str() })),
                    Err(e) => Response::err(e.to_string()),
                }
            }
            Request::PolicyApply { path, text } => match self.apply_policy(&path, &text) {
                Ok(summary) => {
                    // Kept over restarts, until the configured policy file is applied again.
                    self.record_policy(Some(&super::state::PolicyRecord { source: path, text }));
                    Response::ok(summary)
                }
                Err(e) => Response::err(format!("{e} (the previous policy stays in force)")),
            },
        }
    }
}

impl Agent {
    pub(super) fn self_arc(&self) -> Option<Arc<Agent>> {
        self.this.get().and_then(std::sync::Weak::upgrade)
    }
}
