//! Every case of the Unleash client specification, through our server.
//!
//! For each specification file: a fresh server over a fresh database, the file's
//! `state` loaded through the admin API, then every case evaluated
//! (a) server-side through `POST /api/frontend`,
//! (b) by an SDK engine (a fresh yggdrasil `EngineState`) fed from
//!     `GET /api/client/features` with `Unleash-Client-Spec: 5.1.0` (segments as a list),
//! (c) again from `GET /api/client/features` without the header (segments inlined),
//! (d) by an engine fed from one `GET /api/client/delta` (a hydration), and
//! (e) for the files whose state is a list of delta events (19, 20): by an engine that
//!     hydrated from `/api/client/delta` before anything was loaded and then applied,
//!     event by event, what the delta API answered (with its ETag) after each of the
//!     file's events had been made on the server.
//!
//! A delta file's events are made on the server one at a time: `feature-updated`,
//! `segment-updated` and `hydration` by importing the state they lead to (import
//! replaces the environment, as a hydration does), `feature-removed` by archiving the
//! flag and `segment-removed` by deleting the segment through the admin API.
//!
//! The specification lives in `shared/data/unleash-client-specification` beside the
//! repository (override with `CORDON_UNLEASH_SPEC_DIR`).

mod common;

use std::path::PathBuf;

use common::ADMIN;
use serde::Deserialize;
use serde_json::Value;
use unleash_types::client_features::{
    ClientFeatures, ClientFeaturesDelta, Context, DeltaEvent, Payload,
};
use unleash_yggdrasil::{EngineState, UpdateMessage};

/// Cases that cannot pass, with the reason. Empty: every case passes.
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    state: Value,
    #[serde(default)]
    tests: Vec<Case>,
    #[serde(default)]
    variant_tests: Vec<VariantCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    description: String,
    context: Value,
    toggle_name: String,
    expected_result: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariantCase {
    description: String,
    context: Value,
    toggle_name: String,
    expected_result: ExpectedVariant,
}

#[derive(Deserialize, Debug, PartialEq)]
struct ExpectedVariant {
    name: String,
    #[serde(default)]
    payload: Option<Payload>,
    enabled: bool,
    feature_enabled: bool,
}

fn spec_dir() -> PathBuf {
    let dir = std::env::var_os("CORDON_UNLEASH_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/unleash-client-specification")
        })
        .join("specifications");
    assert!(
        dir.join("index.json").is_file(),
        "the Unleash client specification is not at {}; set CORDON_UNLEASH_SPEC_DIR",
        dir.display()
    );
    dir
}

async fn frontend(
    server: &common::Server,
    token: &str,
    context: &Value,
    toggle: &str,
) -> Option<Value> {
    let r = server.post_json("/api/frontend", token, context).await;
    assert_eq!(
        r.status,
        200,
        "frontend: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["toggles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == toggle)
        .cloned()
}

async fn sdk_engine(server: &common::Server, token: &str, spec_header: bool) -> EngineState {
    let headers: &[(&str, &str)] = if spec_header {
        &[("Unleash-Client-Spec", "5.1.0")]
    } else {
        &[]
    };
    let r = server.get("/api/client/features", token, headers).await;
    assert_eq!(
        r.status,
        200,
        "client features: {}",
        String::from_utf8_lossy(&r.body)
    );
    let features: ClientFeatures = serde_json::from_slice(&r.body).unwrap();
    if spec_header {
        assert!(
            features.segments.is_some(),
            "segments list missing for a 5.1.0 client"
        );
    } else {
        assert!(
            features.segments.is_none(),
            "segments must be inlined for an old client"
        );
    }
    let engine = EngineState::default();
    engine.take_state(UpdateMessage::FullResponse(features));
    engine
}

/// An SDK's delta-API client: the first call hydrates, each later one sends the ETag
/// it was given and applies the events that come back to its engine.
struct DeltaClient {
    engine: EngineState,
    etag: Option<String>,
}

impl DeltaClient {
    fn new() -> Self {
        Self {
            engine: EngineState::default(),
            etag: None,
        }
    }

    /// Fetch and apply what changed since the last call; returns those events.
    async fn poll(&mut self, server: &common::Server, token: &str) -> Vec<DeltaEvent> {
        let mut headers = vec![("Unleash-Client-Spec", "5.2.0")];
        if let Some(etag) = &self.etag {
            headers.push(("If-None-Match", etag));
        }
        let r = server.get("/api/client/delta", token, &headers).await;
        if r.status == 304 {
            return Vec::new();
        }
        assert_eq!(
            r.status,
            200,
            "client delta: {}",
            String::from_utf8_lossy(&r.body)
        );
        self.etag = Some(
            r.header("etag")
                .expect("a delta answer has an ETag")
                .to_owned(),
        );
        let delta: ClientFeaturesDelta = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)));
        self.engine
            .take_state(UpdateMessage::PartialUpdate(delta.clone()));
        delta.events
    }
}

/// What a delta event is about, comparable across event ids: `("feature-updated",
/// name)`, `("segment-removed", id)`, ...
fn subject(e: &DeltaEvent) -> (&'static str, String) {
    match e {
        DeltaEvent::FeatureUpdated { feature, .. } => ("feature-updated", feature.name.clone()),
        DeltaEvent::FeatureRemoved { feature_name, .. } => {
            ("feature-removed", feature_name.clone())
        }
        DeltaEvent::SegmentUpdated { segment, .. } => ("segment-updated", segment.id.to_string()),
        DeltaEvent::SegmentRemoved { segment_id, .. } => {
            ("segment-removed", segment_id.to_string())
        }
        DeltaEvent::Hydration { .. } => ("hydration", String::new()),
    }
}

/// The events a delta client that was up to date must be sent after `event` was made
/// on the server: the event itself, or for a hydration one update per segment and flag.
fn expected_from_server(event: &DeltaEvent) -> Vec<(&'static str, String)> {
    match event {
        DeltaEvent::Hydration {
            features, segments, ..
        } => segments
            .iter()
            .map(|s| ("segment-updated", s.id.to_string()))
            .chain(features.iter().map(|f| ("feature-updated", f.name.clone())))
            .collect(),
        other => vec![subject(other)],
    }
}

/// Make the delta `events` of a specification file on the server, one at a time;
/// after each, `follower` must be sent (at least) what the event changed.
async fn apply_events_through_the_server(
    file: &str,
    server: &common::Server,
    client_token: &str,
    events: &[DeltaEvent],
    follower: &mut DeltaClient,
) {
    let mut state = ClientFeatures {
        version: 2,
        ..ClientFeatures::default()
    };
    for event in events {
        state.apply_delta(&ClientFeaturesDelta {
            events: vec![event.clone()],
        });
        let r = match event {
            DeltaEvent::FeatureRemoved {
                feature_name,
                project,
                ..
            } => {
                server
                    .delete(
                        &format!("/api/admin/projects/{project}/features/{feature_name}"),
                        ADMIN,
                    )
                    .await
            }
            DeltaEvent::SegmentRemoved { segment_id, .. } => {
                server
                    .delete(&format!("/api/admin/segments/{segment_id}"), ADMIN)
                    .await
            }
            DeltaEvent::FeatureUpdated { .. }
            | DeltaEvent::SegmentUpdated { .. }
            | DeltaEvent::Hydration { .. } => {
                server
                    .import("development", &serde_json::to_value(&state).unwrap())
                    .await
            }
        };
        assert!(
            r.status < 300,
            "{file}: making {:?} on the server: {} {}",
            subject(event),
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let sent: Vec<(&str, String)> = follower
            .poll(server, client_token)
            .await
            .iter()
            .map(subject)
            .collect();
        for want in expected_from_server(event) {
            assert!(
                sent.contains(&want),
                "{file}: after {:?} the delta API sent {sent:?}, without {want:?}",
                subject(event)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_specification_case_passes_through_the_server() {
    let dir = spec_dir();
    let index: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut total = 0;
    for file in &index {
        let spec: SpecFile = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        if spec.tests.is_empty() && spec.variant_tests.is_empty() {
            report.push(format!("{file}: no cases"));
            continue;
        }
        let server = common::start().await;
        let frontend_token = server.create_token("frontend", "*", "development").await;
        let client_token = server.create_token("client", "*", "development").await;
        // A delta file's state is the events themselves; any other file's is a state
        // as the client API serves it.
        let delta_events = spec.state.get("events").map(|_| {
            serde_json::from_value::<ClientFeaturesDelta>(spec.state.clone())
                .unwrap_or_else(|e| panic!("{file}: delta state: {e}"))
                .events
        });
        let mut follower = None;
        match &delta_events {
            Some(events) => {
                let mut f = DeltaClient::new();
                let hello = f.poll(&server, &client_token).await;
                assert_eq!(
                    hello.iter().map(subject).collect::<Vec<_>>(),
                    [("hydration", String::new())],
                    "{file}: the first delta call hydrates"
                );
                apply_events_through_the_server(file, &server, &client_token, events, &mut f).await;
                follower = Some(f);
            }
            None => {
                let r = server.import("development", &spec.state).await;
                assert_eq!(
                    r.status,
                    202,
                    "{file}: import: {}",
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
        let mut hydrated = DeltaClient::new();
        hydrated.poll(&server, &client_token).await;
        let mut engines = vec![
            (
                "client API + SDK engine",
                sdk_engine(&server, &client_token, true).await,
            ),
            (
                "client API (inlined segments) + SDK engine",
                sdk_engine(&server, &client_token, false).await,
            ),
            ("delta API (hydration) + SDK engine", hydrated.engine),
        ];
        if let Some(f) = follower {
            engines.push(("delta API (event by event) + SDK engine", f.engine));
        }
        let paths = 1 + engines.len();

        let mut passed = 0;
        let mut cases = 0;
        let mut check = |ok: bool, description: &str, path: &str, detail: String| {
            cases += 1;
            let known = KNOWN_FAILURES
                .iter()
                .any(|(f, d, _)| f == file && *d == description);
            if ok {
                passed += 1;
                assert!(
                    !known,
                    "{file}: '{description}' is listed as a known failure but passes; remove it"
                );
            } else if !known {
                failures.push(format!("{file}: '{description}' via {path}: {detail}"));
            }
        };
        for case in &spec.tests {
            let context: Context = serde_json::from_value(case.context.clone()).unwrap();
            let via_frontend =
                frontend(&server, &frontend_token, &case.context, &case.toggle_name).await;
            let got = via_frontend.as_ref().is_some_and(|t| t["enabled"] == true);
            check(
                got == case.expected_result,
                &case.description,
                "frontend API",
                format!("expected {}, got {got}", case.expected_result),
            );
            for (name, engine) in &engines {
                let got = engine.is_enabled(&case.toggle_name, &context, &None);
                check(
                    got == case.expected_result,
                    &case.description,
                    name,
                    format!("expected {}, got {got}", case.expected_result),
                );
            }
        }
        for case in &spec.variant_tests {
            let context: Context = serde_json::from_value(case.context.clone()).unwrap();
            let via_frontend =
                frontend(&server, &frontend_token, &case.context, &case.toggle_name).await;
            let got = match via_frontend {
                Some(t) => ExpectedVariant {
                    name: t["variant"]["name"].as_str().unwrap().to_owned(),
                    payload: serde_json::from_value(t["variant"]["payload"].clone()).unwrap(),
                    enabled: t["variant"]["enabled"] == true,
                    feature_enabled: t["enabled"] == true,
                },
                // The frontend API lists enabled flags only; absent means disabled.
                None => ExpectedVariant {
                    name: "disabled".into(),
                    payload: None,
                    enabled: false,
                    feature_enabled: false,
                },
            };
            check(
                got == case.expected_result,
                &case.description,
                "frontend API",
                format!("expected {:?}, got {got:?}", case.expected_result),
            );
            for (name, engine) in &engines {
                let v = engine.get_variant(&case.toggle_name, &context, &None);
                let got = ExpectedVariant {
                    name: v.name,
                    payload: v.payload,
                    enabled: v.enabled,
                    feature_enabled: v.feature_enabled,
                };
                check(
                    got == case.expected_result,
                    &case.description,
                    name,
                    format!("expected {:?}, got {got:?}", case.expected_result),
                );
            }
        }
        total += cases;
        report.push(format!(
            "{file}: {passed}/{cases} checks passed ({} cases, {} variant cases, {paths} paths each)",
            spec.tests.len(),
            spec.variant_tests.len()
        ));
    }
    for line in &report {
        println!("{line}");
    }
    println!("{total} checks over {} files", index.len());
    assert!(
        failures.is_empty(),
        "{} failing checks:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
