//! MeatyMusic's workflow stream (seed 003, PROTOCOL.md section 7): the
//! `WorkflowEvent` every `/ws/workflows` client receives, one JSON text
//! frame each, byte for byte what its FastAPI backend sends (Starlette's
//! `send_json` of the pydantic model: fields in declaration order, `None`
//! as `null`, compact separators, non-ASCII unescaped).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    Encoded, Event, EventFamily, Family, Fields, Invalid, Outcome, SessionId,
    events::event_family,
    values::{JsonObject, Millis, Timestamp},
};

/// Where a workflow (or one of its nodes) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    End,
    Fail,
}

/// One step of a workflow run; `node_name` is `None` for the run itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowEvent {
    pub ts: Timestamp,
    pub run_id: SessionId,
    #[serde(default)]
    pub node_name: Option<String>,
    pub phase: Phase,
    #[serde(default)]
    pub duration_ms: Option<Millis>,
    #[serde(default)]
    pub data: Option<JsonObject>,
    pub request_id: String,
}

impl Event for WorkflowEvent {
    fn outcome(&self) -> Outcome {
        let run_level = self.node_name.is_none();
        Outcome {
            is_progress: false,
            completed: run_level && self.phase == Phase::End,
            failed: run_level && self.phase == Phase::Fail,
        }
    }
}

event_family! {
    /// The workflow stream has one event type.
    WorkflowFamily in Family::Workflow, encoded by encode_workflow {
        "workflow" => Workflow(WorkflowEvent),
    }
}

/// Stored and sequenced as `{"seq":N,` + the frame's fields: the seq is kept
/// with the event for history, and [`workflow_frame`] cuts it off, once per
/// publish, for the clients, whose `WorkflowEvent` has no seq.
fn encode_workflow(event: &WorkflowFamily, _run: &SessionId, _ts: &Timestamp) -> Encoded {
    let frame = serde_json::to_string(event).expect("event types always serialize");
    let fields = frame.strip_prefix('{').expect("an object");
    Encoded {
        head: "{\"seq\":".to_string(),
        tail: format!(",{fields}"),
    }
}

/// The frame a workflow client receives, from the stored form.
pub fn workflow_frame(stored: &str) -> String {
    // `{"seq":N,` then the fields: the frame is `{` + the fields.
    match stored.find(',') {
        Some(comma) => format!("{{{}", &stored[comma + 1..]),
        None => stored.to_string(),
    }
}

impl WorkflowEvent {
    /// Validates a published `WorkflowEvent` addressed to `run`: `run_id`
    /// must match it, and `ts` is herald's clock when absent.
    pub fn from_request(run: &SessionId, body: &RawValue) -> Result<Self, Invalid> {
        let mut fields = Fields::all(body)?;
        let now = serde_json::value::to_raw_value(&Timestamp::now()).expect("a string");
        if fields.get("ts").is_none_or(|ts| ts.get() == "null") {
            fields.insert("ts", &now);
        }
        let mut event: Self = fields.into_event()?;
        if event.run_id != *run {
            return Err(Invalid::new(
                "run_id",
                format!(
                    "run_id {:?} differs from the run addressed, {run:?}",
                    event.run_id
                ),
            ));
        }
        event.data = event.data.map(JsonObject::compact);
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<WorkflowEvent, Invalid> {
        let raw: Box<RawValue> = serde_json::from_str(body).unwrap();
        WorkflowEvent::from_request(&SessionId::parse("run-123").unwrap(), &raw)
    }

    #[test]
    fn frames_are_what_fastapi_sends() {
        let event = parse(
            r#"{"run_id":"run-123","phase":"end","node_name":"STYLE","ts":"2025-11-13T10:00:25Z","duration_ms":20000,"data":{ "scores": {"completeness": 0.95}, "name": "é" },"request_id":"req-1"}"#,
        )
        .unwrap();
        let family = WorkflowFamily::from(event);
        let stored = family
            .encode(&SessionId::parse("run-123").unwrap(), &Timestamp::now())
            .with_seq(4);
        assert_eq!(
            workflow_frame(stored.get()),
            r#"{"ts":"2025-11-13T10:00:25Z","run_id":"run-123","node_name":"STYLE","phase":"end","duration_ms":20000,"data":{"scores":{"completeness":0.95},"name":"é"},"request_id":"req-1"}"#
        );
        let run_level = parse(r#"{"run_id":"run-123","phase":"start","request_id":"r"}"#).unwrap();
        let stored = WorkflowFamily::from(run_level)
            .encode(&SessionId::parse("run-123").unwrap(), &Timestamp::now())
            .with_seq(1);
        let frame = workflow_frame(stored.get());
        assert!(frame.starts_with(r#"{"ts":""#), "{frame}");
        assert!(frame.ends_with(r#","run_id":"run-123","node_name":null,"phase":"start","duration_ms":null,"data":null,"request_id":"r"}"#), "{frame}");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            parse(r#"{"run_id":"x","phase":"start","request_id":"r"}"#)
                .unwrap_err()
                .field,
            "run_id"
        );
        assert_eq!(
            parse(r#"{"run_id":"run-123","phase":"done","request_id":"r"}"#)
                .unwrap_err()
                .field,
            "phase"
        );
        assert_eq!(
            parse(r#"{"run_id":"run-123","phase":"start"}"#)
                .unwrap_err()
                .field,
            "request_id"
        );
        assert_eq!(
            parse(r#"{"run_id":"run-123","phase":"start","request_id":"r","mrn":"1"}"#)
                .unwrap_err()
                .field,
            "mrn"
        );
    }
}
