//! Property tests (proptest) of everything herald reads from a client or a
//! backend: session ids, the session events of docs/protocol.md, `subscribe`
//! payloads and publish bodies. Generated valid input must be accepted and
//! come out with the fields the protocol names; generated invalid input must
//! be refused with a readable reason naming the field at fault; arbitrary
//! input must never panic. The publish bodies go through the router herald
//! serves (`Herald::router`, in memory), so the body reader, the JSON parser
//! and the publish handlers are the ones a backend reaches.

use std::sync::OnceLock;

use axum::{
    Router,
    body::Body,
    http::{Request, header},
};
use clap::Parser;
use herald::{
    Config, Herald, Publication, SessionId,
    protocol::{InvalidRequest, InvalidSessionId, SessionEvent, SessionRequest, Timestamp, encode},
};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Map, Value, json, value::RawValue};
use tower::ServiceExt;

// ---------------------------------------------------------------- session ids

/// Text of `min` to `max` of the characters docs/protocol.md allows in a
/// session id.
fn id_chars(min: usize, max: usize) -> BoxedStrategy<String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._:-]{{{min},{max}}}"))
        .unwrap()
        .boxed()
}

fn valid_id() -> impl Strategy<Value = String> {
    prop_oneof![
        id_chars(1, 16),
        id_chars(1, 128),
        // UUIDs, the ids most backends use.
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ]
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

proptest! {
    #[test]
    fn valid_session_ids_are_accepted_and_round_trip_through_their_rooms(id in valid_id()) {
        let parsed = SessionId::parse(&id).unwrap();
        prop_assert_eq!(parsed.as_str(), id.as_str());
        let (room, arriving) = (parsed.room(), parsed.arriving_room());
        prop_assert_eq!(SessionId::of_room(&room), Some(id.as_str()));
        prop_assert_eq!(SessionId::of_room(&arriving), Some(id.as_str()));
        prop_assert_ne!(room, arriving);
        let json = serde_json::to_string(&parsed).unwrap();
        prop_assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), parsed);
    }

    #[test]
    fn ids_over_the_length_limit_are_refused_with_their_length(
        id in id_chars(129, 400)
    ) {
        let refusal = SessionId::parse(&id).unwrap_err();
        prop_assert_eq!(&refusal, &InvalidSessionId::TooLong(id.chars().count()));
        prop_assert!(refusal.to_string().contains("128"), "{}", refusal);
    }

    #[test]
    fn a_forbidden_character_anywhere_is_refused_and_named(
        before in id_chars(0, 60),
        bad in any::<char>().prop_filter("forbidden", |c| !allowed(*c)),
        after in id_chars(0, 60),
    ) {
        let id = format!("{before}{bad}{after}");
        let refusal = SessionId::parse(&id).unwrap_err();
        prop_assert_eq!(&refusal, &InvalidSessionId::BadCharacter(bad));
        prop_assert!(refusal.to_string().starts_with("sessionId may contain only"));
        // serde refuses it the same way (a publish body's batch items).
        prop_assert!(serde_json::from_value::<SessionId>(json!(id)).is_err());
    }

    /// Any text at all: accepted exactly when it follows the rule, never a
    /// panic, and no text that is not a room name maps to a session.
    #[test]
    fn any_text_is_judged_by_the_rule(text in any::<String>()) {
        let follows = !text.is_empty() && text.chars().count() <= 128 && text.chars().all(allowed);
        match SessionId::parse(&text) {
            Ok(id) => prop_assert!(follows && id.as_str() == text),
            Err(refusal) => prop_assert!(!follows && !refusal.to_string().is_empty()),
        }
        if !text.starts_with("session:") && !text.starts_with("arriving:") {
            prop_assert_eq!(SessionId::of_room(&text), None);
        }
    }
}

// ------------------------------------------------------------- session events

/// What a field of an event holds, as docs/protocol.md section 1 says.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Text,
    Flag,
    /// A non-negative integer.
    Count,
    /// A number from 0 to 100.
    Percent,
    /// A non-negative number of milliseconds.
    Millis,
    OneOf(&'static [&'static str]),
    /// Any JSON object.
    Object,
    /// `prompts`: an object of five counts.
    Prompts,
}

#[derive(Clone, Copy, Debug)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const PROMPT_COUNTS: [&str; 5] = ["total", "completed", "processing", "pending", "failed"];

/// Every session event and its fields, from docs/protocol.md section 1.
const EVENTS: &[(&str, &[Field])] = &[
    (
        "progress",
        &[
            req(
                "status",
                Kind::OneOf(&["ACTIVE", "PROCESSING", "COMPLETED", "FAILED", "EXPIRED"]),
            ),
            req("progress", Kind::Percent),
            req("prompts", Kind::Prompts),
            req("hasClarifications", Kind::Flag),
            req("clarificationCount", Kind::Count),
            opt("hasResult", Kind::Flag),
            opt("result", Kind::Object),
        ],
    ),
    (
        "model_result",
        &[
            req("modelName", Kind::Text),
            req("duration", Kind::Millis),
            req("result", Kind::Text),
            req(
                "status",
                Kind::OneOf(&["processing", "completed", "failed"]),
            ),
            opt("error", Kind::Text),
            opt("provider", Kind::Text),
        ],
    ),
    (
        "clarification",
        &[
            req("clarificationId", Kind::Text),
            req("question", Kind::Text),
            req("status", Kind::OneOf(&["pending", "answered"])),
        ],
    ),
    ("completed", &[req("result", Kind::Object)]),
    ("error", &[req("error", Kind::Text)]),
];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn count() -> impl Strategy<Value = Value> {
    prop_oneof![0u64..1000, Just(0), Just(u64::MAX)].prop_map(Value::from)
}

fn valid_value(kind: Kind) -> BoxedStrategy<Value> {
    match kind {
        Kind::Text => any::<String>().prop_map(Value::from).boxed(),
        Kind::Flag => any::<bool>().prop_map(Value::from).boxed(),
        Kind::Count => count().boxed(),
        Kind::Percent => prop_oneof![
            (0u8..=100).prop_map(Value::from),
            (0.0f64..=100.0).prop_map(Value::from),
        ]
        .boxed(),
        Kind::Millis => prop_oneof![
            any::<u64>().prop_map(Value::from),
            (0.0f64..1e12).prop_map(Value::from),
        ]
        .boxed(),
        Kind::OneOf(names) => prop::sample::select(names).prop_map(Value::from).boxed(),
        Kind::Object => prop::collection::btree_map(".{0,8}", any_json(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        Kind::Prompts => prop::collection::vec(count(), 5)
            .prop_map(|counts| {
                Value::Object(
                    PROMPT_COUNTS
                        .iter()
                        .map(|n| n.to_string())
                        .zip(counts)
                        .collect(),
                )
            })
            .boxed(),
    }
}

/// A valid event: its name, its fields and its `data`.
fn valid_event() -> impl Strategy<Value = (&'static str, &'static [Field], Map<String, Value>)> {
    prop::sample::select(EVENTS).prop_flat_map(|(name, fields)| {
        let members: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
            .iter()
            .map(|f| {
                let value = valid_value(f.kind).prop_map(move |v| Some((f.name.to_string(), v)));
                if f.required {
                    value.boxed()
                } else {
                    prop_oneof![Just(None), value].boxed()
                }
            })
            .collect();
        members.prop_map(move |m| (name, fields, m.into_iter().flatten().collect()))
    })
}

/// One way to break a valid event, and the field the refusal must name.
#[derive(Clone, Debug)]
enum Mutation {
    /// Leave a required field out.
    Missing,
    /// A value of another JSON type.
    WrongType(Value),
    /// The right type, outside its range or enumeration.
    OutOfRange(Value),
    /// The value wrapped in an array or an object.
    Nested { in_array: bool },
    /// A field the schema does not list.
    Unknown(String),
}

fn wrong_type(kind: Kind, required: bool) -> impl Strategy<Value = Value> {
    let is_number = matches!(kind, Kind::Count | Kind::Percent | Kind::Millis);
    let is_string = matches!(kind, Kind::Text | Kind::OneOf(_));
    let is_object = matches!(kind, Kind::Object | Kind::Prompts);
    let mut choices: Vec<Value> = Vec::new();
    if required {
        // `null` means absent: wrong only where the field is required.
        choices.push(Value::Null);
    }
    if !is_number {
        choices.extend([json!(7), json!(-2.5)]);
    }
    if !is_string {
        choices.push(json!("50"));
    }
    if !matches!(kind, Kind::Flag) {
        choices.push(json!(true));
    }
    if !is_object {
        choices.push(json!({ "value": 1 }));
    }
    choices.push(json!([1, 2]));
    prop::sample::select(choices)
}

fn out_of_range(kind: Kind) -> Option<BoxedStrategy<Value>> {
    Some(match kind {
        Kind::Count => prop_oneof![
            (i64::MIN..-1).prop_map(Value::from),
            (0u32..1000).prop_map(|n| Value::from(f64::from(n) + 0.5)),
            // One past u64::MAX.
            Just(serde_json::from_str("18446744073709551616").unwrap()),
        ]
        .boxed(),
        Kind::Percent => prop_oneof![(100.001f64..1e12), (-1e12f64..-0.001)]
            .prop_map(Value::from)
            .boxed(),
        Kind::Millis => (-1e12f64..-0.001).prop_map(Value::from).boxed(),
        Kind::OneOf(names) => "[a-zA-Z_]{1,12}"
            .prop_filter("not a member", move |s| !names.contains(&s.as_str()))
            .prop_map(Value::from)
            .boxed(),
        Kind::Text | Kind::Flag | Kind::Object | Kind::Prompts => return None,
    })
}

/// A broken event: its name, `data`, and the path (under `data`) the
/// refusal must name.
fn broken_event() -> impl Strategy<Value = (&'static str, Map<String, Value>, String)> {
    (valid_event(), any::<prop::sample::Index>(), any::<u8>()).prop_flat_map(
        |((name, fields, data), pick, choice)| {
            // A prompt count is a field too, one level down.
            let mut targets: Vec<(String, Kind, bool)> = fields
                .iter()
                .map(|f| (f.name.to_string(), f.kind, f.required))
                .collect();
            if name == "progress" {
                targets.extend(
                    PROMPT_COUNTS
                        .iter()
                        .map(|c| (format!("prompts.{c}"), Kind::Count, true)),
                );
            }
            let (path, kind, required) = pick.get(&targets).clone();
            let mut mutations: Vec<BoxedStrategy<Mutation>> = vec![
                wrong_type(kind, required)
                    .prop_map(Mutation::WrongType)
                    .boxed(),
                any::<bool>()
                    .prop_map(|in_array| Mutation::Nested { in_array })
                    .boxed(),
                "[a-z][a-zA-Z]{0,10}"
                    .prop_filter("not a field", move |k| {
                        !fields.iter().any(|f| f.name == k)
                            && !PROMPT_COUNTS.contains(&k.as_str())
                            && !matches!(k.as_str(), "seq" | "timestamp" | "sessionId")
                    })
                    .prop_map(Mutation::Unknown)
                    .boxed(),
            ];
            if required {
                mutations.push(Just(Mutation::Missing).boxed());
            }
            if let Some(values) = out_of_range(kind) {
                mutations.push(values.prop_map(Mutation::OutOfRange).boxed());
            }
            let pick = choice as usize % mutations.len();
            let mutation = mutations.swap_remove(pick);
            mutation.prop_map(move |m| {
                let mut data = data.clone();
                let at = apply(&mut data, &path, kind, &m);
                (name, data, at)
            })
        },
    )
}

/// Breaks `data` at `path` as `mutation` says; returns the path the refusal
/// must name.
fn apply(data: &mut Map<String, Value>, path: &str, kind: Kind, mutation: &Mutation) -> String {
    let (parent, leaf) = match path.split_once('.') {
        Some((outer, leaf)) => (
            data.get_mut(outer)
                .and_then(Value::as_object_mut)
                .expect("a nested object"),
            leaf,
        ),
        None => (data, path),
    };
    match mutation {
        Mutation::Missing => {
            parent.remove(leaf);
        }
        Mutation::WrongType(v) | Mutation::OutOfRange(v) => {
            parent.insert(leaf.to_string(), v.clone());
        }
        Mutation::Nested { in_array } => {
            let value = parent.get(leaf).cloned().unwrap_or(json!(1));
            let wrapped = if *in_array {
                json!([value])
            } else {
                json!({ "nested": value })
            };
            parent.insert(leaf.to_string(), wrapped);
            // Any object is a valid `result`, however deep: wrap it in an
            // array instead.
            if matches!(kind, Kind::Object) && !in_array {
                let value = parent.remove(leaf).unwrap();
                parent.insert(leaf.to_string(), json!([value]));
            }
            // `prompts` in an object: the refusal names the unknown member.
            if matches!(kind, Kind::Prompts) && !in_array {
                return format!("{path}.nested");
            }
        }
        Mutation::Unknown(key) => {
            parent.insert(key.clone(), json!(1));
            return match path.split_once('.') {
                Some((outer, _)) => format!("{outer}.{key}"),
                None => key.clone(),
            };
        }
    }
    path.to_string()
}

fn raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

proptest! {
    #[test]
    fn valid_events_are_accepted_and_delivered_with_their_fields(
        (name, _, data) in valid_event(),
        id in valid_id(),
        seq in 1u64..u64::MAX,
    ) {
        let session = SessionId::parse(&id).unwrap();
        let publication =
            Publication::<SessionEvent>::from_json(session.clone(), name, &raw(&Value::Object(data.clone())))
                .unwrap_or_else(|e| panic!("{name} {data:?} refused: {e:?}"));
        prop_assert!(publication.timestamp.is_none());
        let timestamp = Timestamp::now();
        let delivered: Value =
            serde_json::from_str(encode(&session, &timestamp, &publication.event).with_seq(seq).get())
                .unwrap();
        let mut expected = data;
        expected.insert("sessionId".into(), json!(id));
        expected.insert("timestamp".into(), serde_json::to_value(&timestamp).unwrap());
        expected.insert("seq".into(), json!(seq));
        // Both read by the same parser: serde_json reads some floats one
        // unit off, and herald forwards numbers as their text.
        let expected: Value = serde_json::from_str(&Value::Object(expected).to_string()).unwrap();
        prop_assert_eq!(delivered, expected);
    }

    #[test]
    fn broken_events_are_refused_naming_the_field((name, data, path) in broken_event()) {
        let session = SessionId::parse("prop").unwrap();
        let refusal = Publication::<SessionEvent>::from_json(session, name, &raw(&Value::Object(data.clone())))
            .expect_err("a broken event was accepted");
        prop_assert_eq!(&refusal.field, &format!("data.{path}"), "{} {:?}: {}", name, data, refusal.message);
        let leaf = path.rsplit('.').next().unwrap();
        prop_assert!(refusal.message.contains(leaf), "{}", refusal.message);
    }

    /// Any JSON as `data` of any event name: judged, never a panic.
    #[test]
    fn any_data_is_judged_without_panicking(
        name in prop_oneof![prop::sample::select(EVENTS).prop_map(|(n, _)| n.to_string()), ".{0,12}"],
        data in any_json(),
    ) {
        let session = SessionId::parse("prop").unwrap();
        if let Err(refusal) = Publication::<SessionEvent>::from_json(session, &name, &raw(&data)) {
            prop_assert!(!refusal.message.is_empty());
            prop_assert!(refusal.field == "event" || refusal.field.starts_with("data"), "{:?}", refusal);
        }
    }
}

// ------------------------------------------------------------ client requests

proptest! {
    #[test]
    fn valid_subscribe_payloads_are_read_as_sent(
        id in valid_id(),
        since in proptest::option::of(any::<u64>()),
        epoch in proptest::option::of(".{0,16}"),
        as_object in any::<bool>(),
    ) {
        let payload = if as_object || since.is_some() || epoch.is_some() {
            json!({ "sessionId": id, "since": since, "epoch": epoch })
        } else {
            json!(id)
        };
        let request = SessionRequest::parse(Some(&payload)).unwrap();
        prop_assert_eq!(request.session_id.as_str(), id.as_str());
        prop_assert_eq!((request.since, request.epoch), (since, epoch));
    }

    /// Whatever a client emits as the payload: a request or a refusal with a
    /// reason, never a panic; and only a session id or an object holding one
    /// is ever a request.
    #[test]
    fn any_subscribe_payload_is_judged(payload in proptest::option::of(any_json())) {
        match SessionRequest::parse(payload.as_ref()) {
            Ok(request) => {
                let id = match payload.as_ref().unwrap() {
                    Value::String(id) => id,
                    Value::Object(fields) => fields["sessionId"].as_str().unwrap(),
                    other => panic!("{other} read as a request"),
                };
                prop_assert_eq!(request.session_id.as_str(), id);
            }
            Err(refusal) => {
                prop_assert!(!refusal.to_string().is_empty());
                prop_assert_eq!(refusal.code(), "INVALID_SESSION_ID");
                if let InvalidRequest::SessionId(why) = &refusal {
                    prop_assert!(why.to_string().starts_with("sessionId"));
                }
            }
        }
    }
}

// ------------------------------------------------------------- publish bodies

/// One runtime and one in-memory herald for every publish property.
fn herald() -> &'static (tokio::runtime::Runtime, Router) {
    static HERALD: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    HERALD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let router = rt.block_on(async {
            let (herald, _background) = Herald::new(&Config::parse_from(["herald"])).unwrap();
            herald.router()
        });
        (rt, router)
    })
}

/// Sends a request to the in-memory herald: the status and the JSON answer.
fn call(method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let (rt, router) = herald();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    rt.block_on(async {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let answer = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status} answer is not JSON ({e}): {bytes:?}"));
        (status, answer)
    })
}

fn session_seq(id: &str) -> u64 {
    let (status, state) = call("GET", &format!("/api/v1/sessions/{id}"), Vec::new());
    assert_eq!(status, 200, "{state}");
    state["seq"].as_u64().unwrap()
}

/// A refusal a backend can act on: a 4xx with a readable `error`.
fn assert_readable_refusal(status: u16, answer: &Value, body: &[u8]) {
    assert!(
        matches!(status, 400 | 413 | 415 | 422),
        "{status} {answer} for {:?}",
        String::from_utf8_lossy(body)
    );
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.len() > 5, "{status} without a reason: {answer}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any bytes, to both publish routes: a refusal, or (for JSON that
    /// happens to be a valid publish) an accepted event; never a 5xx.
    #[test]
    fn any_bytes_posted_are_answered(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        // Near JSON: valid JSON cut short or with a byte flipped.
        (any_json(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut text = v.to_string().into_bytes();
            let at = at.index(text.len());
            text[at] = byte;
            text
        }),
    ], batch in any::<bool>()) {
        let path = if batch { "/api/v1/events" } else { "/api/v1/sessions/bytes/events" };
        let (status, answer) = call("POST", path, body.clone());
        if status == 202 {
            prop_assert!(serde_json::from_slice::<Value>(&body).is_ok());
        } else {
            assert_readable_refusal(status, &answer, &body);
        }
    }

    /// A batch with one broken item is refused as a whole, naming the item
    /// and its field, and publishes nothing.
    #[test]
    fn a_batch_with_one_broken_item_publishes_nothing(
        valid in prop::collection::vec(valid_event(), 0..4),
        (name, broken, path) in broken_event(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut items: Vec<Value> = valid
            .into_iter()
            .map(|(name, _, data)| json!({ "sessionId": "batch", "event": name, "data": data }))
            .collect();
        let at = at.index(items.len() + 1);
        items.insert(at, json!({ "sessionId": "batch", "event": name, "data": broken }));
        let before = session_seq("batch");
        let body = Value::from(items).to_string().into_bytes();
        let (status, answer) = call("POST", "/api/v1/events", body);
        prop_assert_eq!(status, 422, "{}", answer);
        prop_assert_eq!(&answer["field"], &json!(format!("[{at}].data.{path}")), "{}", answer);
        prop_assert_eq!(session_seq("batch"), before);
    }

    /// A valid event posted on its own is published with the next seq.
    #[test]
    fn a_valid_publish_takes_the_next_seq((name, _, data) in valid_event()) {
        let before = session_seq("one");
        let body = json!({ "event": name, "data": data }).to_string().into_bytes();
        let (status, receipt) = call("POST", "/api/v1/sessions/one/events", body);
        prop_assert_eq!(status, 202, "{}", receipt);
        prop_assert_eq!(&receipt, &json!({ "sessionId": "one", "event": name, "seq": before + 1 }));
    }
}
