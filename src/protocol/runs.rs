//! ResearchFlow's run events (seeds 000-002, PROTOCOL.md section 6): the
//! twelve event types with their payload fields, their five categories, and
//! the frame `/ws` clients receive. Each payload is a struct that refuses
//! any field it does not list: payloads stay PHI-safe (ids, names, counts,
//! percentages, status strings, codes, timestamps), and a `patientName`,
//! an `mrn` or free text outside the schema is a refusal naming the field.

use serde::{Deserialize, Serialize};

use super::{
    Encoded, Event, EventFamily, Family, Fields, Invalid, Outcome, SessionId,
    events::event_family,
    values::{Millis, Percent, Timestamp},
};

/// Declares the payload structs: every run event names its run, and may
/// name the project and user it concerns (what `to: "project"` and
/// `to: "user"` address), beside its own required and optional fields.
macro_rules! run_payloads {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($req:ident: $rty:ty,)* } optional { $($opt:ident: $oty:ty,)* }
    )+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            pub run_id: SessionId,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub project_id: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub user_id: Option<String>,
            $(pub $req: $rty,)*
            $(#[serde(default, skip_serializing_if = "Option::is_none")]
            pub $opt: Option<$oty>,)*
        }

        impl $name {
            /// The run whose stream the event belongs to.
            pub fn run(&self) -> &SessionId {
                &self.run_id
            }
        }
    )+};
}

run_payloads! {
    /// `run.created`: a new run exists.
    RunCreated { run_name: String, stage_count: u64, created_by: String, }
        optional { created_at: Timestamp, }
    /// `run.started`: the run began executing.
    RunStarted {} optional { estimated_duration: Millis, started_at: Timestamp, }
    /// `run.completed`: the run finished successfully.
    RunCompleted {} optional {
        completed_at: Timestamp, duration_ms: Millis, stages_completed: u64,
        artifacts_generated: u64,
    }
    /// `run.failed`: the run stopped on an error, told by its code.
    RunFailed { error_code: String, } optional {
        failed_at: Timestamp, stage_id: String, duration_ms: Millis,
    }
    /// `stage.started`: a stage began.
    StageStarted { stage_id: String, stage_name: String, } optional {
        stage_number: u64, total_stages: u64,
    }
    /// `stage.progress`: how far a stage has come (0-100).
    StageProgress { stage_id: String, stage_name: String, progress: Percent, } optional {
        status_message: String, items_processed: u64, items_total: u64,
    }
    /// `stage.completed`: a stage finished.
    StageCompleted { stage_id: String, stage_name: String, } optional {
        stage_number: u64, duration_ms: Millis,
    }
    /// `stage.failed`: a stage stopped on an error.
    StageFailed { stage_id: String, stage_name: String, error_code: String, } optional {
        stage_number: u64, retries_remaining: u64,
    }
    /// `artifact.created`: a stage produced an artifact.
    ArtifactCreated { artifact_id: String, artifact_type: String, } optional {
        stage_id: String, artifact_name: String, size_bytes: u64,
    }
    /// `governance.required`: an approval is needed (PHI scan, ethics review...).
    GovernanceRequired { governance_id: String, governance_type: String, } optional {
        priority: String, assigned_to: Vec<String>,
    }
    /// `approval.granted`.
    ApprovalGranted { approval_id: String, governance_id: String, granted_by: String, } optional {
        governance_type: String,
    }
    /// `approval.denied`.
    ApprovalDenied { approval_id: String, governance_id: String, denied_by: String, } optional {
        governance_type: String, reason: String, can_retry: bool,
    }
}

impl Event for RunCreated {}
impl Event for RunStarted {}
impl Event for RunCompleted {
    fn outcome(&self) -> Outcome {
        Outcome {
            completed: true,
            ..Outcome::default()
        }
    }
}
impl Event for RunFailed {
    fn outcome(&self) -> Outcome {
        Outcome {
            failed: true,
            ..Outcome::default()
        }
    }
}
impl Event for StageStarted {}
impl Event for StageProgress {}
impl Event for StageCompleted {}
impl Event for StageFailed {}
impl Event for ArtifactCreated {}
impl Event for GovernanceRequired {}
impl Event for ApprovalGranted {}
impl Event for ApprovalDenied {}

event_family! {
    /// ResearchFlow's run events, as seed 001's `events.ts` lists them.
    RunEvent in Family::Run, encoded by encode_run {
        "run.created" => RunCreated(RunCreated),
        "run.started" => RunStarted(RunStarted),
        "run.completed" => RunCompleted(RunCompleted),
        "run.failed" => RunFailed(RunFailed),
        "stage.started" => StageStarted(StageStarted),
        "stage.progress" => StageProgress(StageProgress),
        "stage.completed" => StageCompleted(StageCompleted),
        "stage.failed" => StageFailed(StageFailed),
        "artifact.created" => ArtifactCreated(ArtifactCreated),
        "governance.required" => GovernanceRequired(GovernanceRequired),
        "approval.granted" => ApprovalGranted(ApprovalGranted),
        "approval.denied" => ApprovalDenied(ApprovalDenied),
    }
}

/// The event categories of seed 001, and the type prefixes each covers.
pub const RUN_CATEGORIES: &[(&str, &[&str])] = &[
    ("RUN_EVENTS", &["run."]),
    ("STAGE_EVENTS", &["stage."]),
    ("ARTIFACT_EVENTS", &["artifact."]),
    ("GOVERNANCE_EVENTS", &["governance.", "approval."]),
    ("ALL_EVENTS", &[""]),
];

/// A set of run event types, one bit per type (in `RunEvent::NAMES` order):
/// what a `/ws` client filters on, in two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunTypes(pub u16);

impl RunTypes {
    /// The bit of one event type; `None` for an unknown type.
    pub fn of_type(name: &str) -> Option<Self> {
        let i = RunEvent::NAMES.iter().position(|n| *n == name)?;
        Some(Self(1 << i))
    }

    /// The types of a category; `None` for an unknown category.
    pub fn of_category(category: &str) -> Option<Self> {
        let (_, prefixes) = RUN_CATEGORIES.iter().find(|(c, _)| *c == category)?;
        let mut bits = 0;
        for (i, name) in RunEvent::NAMES.iter().enumerate() {
            if prefixes.iter().any(|p| name.starts_with(p)) {
                bits |= 1 << i;
            }
        }
        Some(Self(bits))
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The type names in the set, in the seed's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        RunEvent::NAMES
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

/// The frame `/ws` clients receive: `{ type, timestamp, seq, payload }`.
fn encode_run(event: &RunEvent, _run: &SessionId, timestamp: &Timestamp) -> Encoded {
    let payload = serde_json::to_string(event).expect("event types always serialize");
    let mut head = String::with_capacity(64);
    head.push_str("{\"type\":\"");
    head.push_str(event.name());
    head.push_str("\",\"timestamp\":");
    head.push_str(&serde_json::to_string(timestamp).expect("string"));
    head.push_str(",\"seq\":");
    let mut tail = String::with_capacity(payload.len() + 13);
    tail.push_str(",\"payload\":");
    tail.push_str(&payload);
    tail.push('}');
    Encoded { head, tail }
}

/// A run event as Socket.IO clients receive it (PROTOCOL.md section 6):
/// the payload's fields (its `runId` among them) plus `timestamp` and
/// `seq`, from the stored `/ws` frame. `None` for a frame that is not one.
pub fn socketio_payload(frame: &str) -> Option<Box<serde_json::value::RawValue>> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        timestamp: &'a serde_json::value::RawValue,
        seq: u64,
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let frame: Frame = serde_json::from_str(frame).ok()?;
    let fields = frame.payload.get().strip_prefix('{')?.trim_start();
    let mut out = String::with_capacity(frame.payload.get().len() + 64);
    out.push_str("{\"timestamp\":");
    out.push_str(frame.timestamp.get());
    out.push_str(",\"seq\":");
    out.push_str(itoa::Buffer::new().format(frame.seq));
    if !fields.starts_with('}') {
        out.push(',');
    }
    out.push_str(fields);
    serde_json::value::RawValue::from_string(out).ok()
}

impl RunEvent {
    /// Validates a `{ type, payload }` pair addressed to `run`; the payload's
    /// `runId` is filled from it when absent, and refused when it differs.
    /// Refusals name the field as the request spells it (`payload.mrn`).
    pub fn from_request(
        run: &SessionId,
        name: &str,
        payload: &serde_json::value::RawValue,
    ) -> Result<Self, Invalid> {
        let mut fields = Fields::all(payload).map_err(|e| e.within("payload"))?;
        let path_id = serde_json::value::to_raw_value(run).expect("a string serializes");
        match fields.get("runId") {
            None => fields.insert("runId", &path_id),
            Some(given) => {
                let same =
                    serde_json::from_str::<&str>(given.get()).is_ok_and(|g| g == run.as_ref());
                if !same {
                    return Err(Invalid::new(
                        "payload.runId",
                        format!(
                            "payload.runId {} differs from the run addressed, {run:?}",
                            given.get()
                        ),
                    ));
                }
            }
        }
        Self::from_fields(name, fields)
            .ok_or_else(|| {
                Invalid::new(
                    "type",
                    format!(
                        "unknown event type {name:?}; expected one of: {}",
                        Self::NAMES.join(", ")
                    ),
                )
            })?
            .map_err(|e| e.within("payload"))
    }

    /// The run whose stream the event belongs to.
    pub fn run(&self) -> &SessionId {
        self.common().0
    }

    /// The project or user the payload names, for `to: "project"` / `"user"`.
    pub fn project(&self) -> Option<&str> {
        self.common().1
    }

    pub fn user(&self) -> Option<&str> {
        self.common().2
    }

    fn common(&self) -> (&SessionId, Option<&str>, Option<&str>) {
        macro_rules! each {
            ($($v:ident),+) => {
                match self {
                    $(Self::$v(e) => (&e.run_id, e.project_id.as_deref(), e.user_id.as_deref()),)+
                }
            };
        }
        each!(
            RunCreated,
            RunStarted,
            RunCompleted,
            RunFailed,
            StageStarted,
            StageProgress,
            StageCompleted,
            StageFailed,
            ArtifactCreated,
            GovernanceRequired,
            ApprovalGranted,
            ApprovalDenied
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn parse(name: &str, payload: &str) -> Result<RunEvent, Invalid> {
        let raw: Box<RawValue> = serde_json::from_str(payload).unwrap();
        RunEvent::from_request(&SessionId::parse("run-1").unwrap(), name, &raw)
    }

    #[test]
    fn phi_outside_the_schema_is_refused_by_name() {
        for (field, value) in [
            ("patientName", "\"John Doe\""),
            ("mrn", "\"123-45-6789\""),
            ("analysisResult", "\"Patient has...\""),
        ] {
            let e = parse(
                "run.completed",
                &format!(r#"{{"projectId":"p","{field}":{value}}}"#),
            )
            .unwrap_err();
            assert_eq!(e.field, format!("payload.{field}"), "{e:?}");
        }
        let e = parse(
            "stage.progress",
            r#"{"stageId":"s","stageName":"n","progress":101}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "payload.progress");
        assert_eq!(parse("run.nope", "{}").unwrap_err().field, "type");
        assert_eq!(
            parse("run.started", r#"{"runId":"other"}"#)
                .unwrap_err()
                .field,
            "payload.runId"
        );
        assert_eq!(
            parse("run.failed", "{}").unwrap_err().field,
            "payload.errorCode"
        );
    }

    #[test]
    fn the_frame_is_type_timestamp_seq_payload() {
        let event = parse(
            "run.started",
            r#"{"projectId":"p","estimatedDuration":300000}"#,
        )
        .unwrap();
        let ts = Timestamp::try_from("2026-01-01T00:00:00.000Z".to_string()).unwrap();
        let frame = event
            .encode(&SessionId::parse("run-1").unwrap(), &ts)
            .with_seq(3);
        assert_eq!(
            frame.get(),
            r#"{"type":"run.started","timestamp":"2026-01-01T00:00:00.000Z","seq":3,"payload":{"runId":"run-1","projectId":"p","estimatedDuration":300000}}"#
        );
        assert_eq!(event.project(), Some("p"));
        assert_eq!(
            socketio_payload(frame.get()).unwrap().get(),
            r#"{"timestamp":"2026-01-01T00:00:00.000Z","seq":3,"runId":"run-1","projectId":"p","estimatedDuration":300000}"#
        );
    }

    #[test]
    fn categories_cover_every_type_once() {
        let all = RunTypes::of_category("ALL_EVENTS").unwrap();
        assert_eq!(all.names().count(), 12);
        let parts = [
            "RUN_EVENTS",
            "STAGE_EVENTS",
            "ARTIFACT_EVENTS",
            "GOVERNANCE_EVENTS",
        ]
        .map(|c| RunTypes::of_category(c).unwrap().0);
        assert_eq!(parts.iter().fold(0, |a, b| a | b), all.0);
        assert_eq!(parts.iter().map(|p| p.count_ones()).sum::<u32>(), 12);
        assert!(RunTypes::of_category("NOPE").is_none());
        assert_eq!(
            RunTypes::of_category("GOVERNANCE_EVENTS")
                .unwrap()
                .names()
                .collect::<Vec<_>>(),
            ["governance.required", "approval.granted", "approval.denied"]
        );
    }
}
