//! What the agents say about flows: the "flow closed" access-log records (the agents run with
//! `MESHD_LOG_FORMAT=json`, one JSON object a line) and the live flows of `meshd status`.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

use super::interrupt;
use crate::Agent;

/// One "flow closed" record, as the agent logged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedFlow {
    /// "Outbound" or "Inbound".
    pub direction: String,
    pub local_identity: String,
    pub peer_identity: String,
    pub destination: String,
    pub data_path: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub duration_ms: u64,
    /// Why it ended (`done`, `reset`, `error: …`, …).
    pub reason: String,
}

impl ClosedFlow {
    fn from_json(v: &Value) -> Option<Self> {
        if v["message"] != "flow closed" {
            return None;
        }
        let s = |k: &str| v[k].as_str().map(str::to_string).unwrap_or_else(|| v[k].to_string());
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Some(Self {
            direction: s("direction"),
            local_identity: s("local_identity"),
            peer_identity: s("peer_identity"),
            destination: s("destination"),
            data_path: s("data_path"),
            bytes_out: n("bytes_out"),
            bytes_in: n("bytes_in"),
            duration_ms: n("duration_ms"),
            reason: s("reason"),
        })
    }

    pub fn is_outbound(&self) -> bool {
        self.direction.eq_ignore_ascii_case("outbound")
    }
}

/// Every "flow closed" record in `log` (non-JSON lines are skipped).
pub fn closed_flows(log: &str) -> Vec<ClosedFlow> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| ClosedFlow::from_json(&v))
        .collect()
}

/// The records of flows to `destination` ("ip:port"), waiting up to `timeout` until at least
/// `min` are there (an agent logs a flow when both of its directions have ended).
pub fn wait_closed(agent: &Agent, destination: &str, min: usize, timeout: Duration) -> Result<Vec<ClosedFlow>> {
    let start = Instant::now();
    loop {
        let flows: Vec<ClosedFlow> =
            closed_flows(&agent.log()).into_iter().filter(|f| f.destination == destination).collect();
        if flows.len() >= min {
            return Ok(flows);
        }
        if start.elapsed() >= timeout || interrupt::requested() {
            bail!(
                "agent {} logged {} of {min} expected \"flow closed\" records for {destination} within {timeout:?}; log tail:\n{}",
                agent.node.name,
                flows.len(),
                agent.log_tail(20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the agent lists no live flow (none leaked); returns the last list otherwise.
pub fn wait_no_live_flows(agent: &Agent, timeout: Duration) -> Result<(), Value> {
    let start = Instant::now();
    loop {
        let flows = agent.try_status().map(|s| s["flows"].clone()).unwrap_or(Value::Null);
        if flows.as_array().is_some_and(Vec::is_empty) {
            return Ok(());
        }
        if start.elapsed() >= timeout || interrupt::requested() {
            return Err(flows);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flow_closed_records_only() {
        let log = concat!(
            "{\"message\":\"flow opened\",\"destination\":\"10.100.1.2:9000\"}\n",
            "not json\n",
            "{\"message\":\"flow closed\",\"direction\":\"Outbound\",\"local_identity\":\"spiffe://t/a\",",
            "\"peer_identity\":\"spiffe://t/b\",\"destination\":\"10.100.1.2:9000\",\"data_path\":\"userspace\",",
            "\"bytes_out\":10,\"bytes_in\":0,\"duration_ms\":5,\"reason\":\"done\"}\n"
        );
        let flows = closed_flows(log);
        assert_eq!(flows.len(), 1);
        assert!(flows[0].is_outbound());
        assert_eq!((flows[0].bytes_out, flows[0].reason.as_str()), (10, "done"));
    }
}
