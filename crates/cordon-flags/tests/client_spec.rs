//! Every case of the Unleash client specification, through our server.
//!
//! For each specification file: a fresh server over a fresh SQLite database, the
//! file's `state` loaded through the admin import, then every case evaluated
//! (a) server-side through `POST /api/frontend`, and
//! (b) by an SDK engine (a fresh yggdrasil `EngineState`) fed from
//!     `GET /api/client/features` with `Unleash-Client-Spec: 5.1.0` (segments as a list),
//! (c) and again from `GET /api/client/features` without the header (segments inlined).
//!
//! The specification lives in `shared/data/unleash-client-specification` beside the
//! repository (override with `CORDON_UNLEASH_SPEC_DIR`).

mod common;

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use unleash_types::client_features::{ClientFeatures, ClientFeaturesDelta, Context, Payload};
use unleash_yggdrasil::{EngineState, UpdateMessage};

/// Cases that cannot pass, with the reason. Empty: every case passes.
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

/// Files whose `state` is a list of delta-API events (`{events: [...]}`). We have no
/// delta endpoint yet, so the events are folded into a full state with
/// `unleash-types` (`ClientFeatures::create_from_delta`) and that is imported; this
/// tests evaluation of the resulting flags, not the `/api/client/delta` API.
const DELTA_STATE_FILES: &[&str] = &["19-delta-api-hydration.json", "20-delta-api-events.json"];

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
        let state = if DELTA_STATE_FILES.contains(&file.as_str()) {
            let delta: ClientFeaturesDelta = serde_json::from_value(spec.state.clone()).unwrap();
            serde_json::to_value(ClientFeatures::create_from_delta(&delta)).unwrap()
        } else {
            assert!(
                spec.state.get("events").is_none(),
                "{file} has a delta state; list it in DELTA_STATE_FILES"
            );
            spec.state.clone()
        };
        let server = common::start().await;
        let r = server.import("development", &state).await;
        assert_eq!(
            r.status,
            202,
            "{file}: import: {}",
            String::from_utf8_lossy(&r.body)
        );
        let frontend_token = server.create_token("frontend", "*", "development").await;
        let client_token = server.create_token("client", "*", "development").await;
        let with_segments = sdk_engine(&server, &client_token, true).await;
        let inlined = sdk_engine(&server, &client_token, false).await;

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
            for (name, engine) in [
                ("client API + SDK engine", &with_segments),
                ("client API (inlined segments) + SDK engine", &inlined),
            ] {
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
            for (name, engine) in [
                ("client API + SDK engine", &with_segments),
                ("client API (inlined segments) + SDK engine", &inlined),
            ] {
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
            "{file}: {passed}/{cases} checks passed ({} cases, {} variant cases, 3 paths each)",
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
