//! `POST /api/admin/playground`: Unleash's playground shapes, the overall answer from
//! the real engine, and per-strategy / per-constraint / per-segment explanations.

mod common;

use common::ADMIN;
use serde_json::{Value, json};

const BASE: &str = "/api/admin/projects/default/features";

async fn post(server: &common::Server, path: &str, body: Value) -> common::Response {
    server.post_json(path, ADMIN, &body).await
}

async fn play(server: &common::Server, context: Value) -> Value {
    let r = post(
        server,
        "/api/admin/playground",
        json!({"environment": "production", "projects": "*", "context": context}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn feature<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing: {answer}"))
}

#[tokio::test]
async fn playground_explains_strategies_constraints_and_segments() {
    let server = common::start().await;
    let seg = post(
        &server,
        "/api/admin/segments",
        json!({"name": "beta", "constraints": [{"contextName": "plan", "operator": "IN", "values": ["pro"]}]}),
    )
    .await;
    assert_eq!(seg.status, 201, "{}", String::from_utf8_lossy(&seg.body));
    let seg_id = seg.json()["id"].clone();
    for name in ["eu-only", "off-flag"] {
        assert_eq!(post(&server, BASE, json!({"name": name})).await.status, 201);
    }
    let strategies = format!("{BASE}/eu-only/environments/production/strategies");
    let s = post(
        &server,
        &strategies,
        json!({"name": "flexibleRollout",
               "parameters": {"rollout": "100", "stickiness": "default", "groupId": "g"},
               "constraints": [
                   {"contextName": "region", "operator": "IN", "values": ["eu"]},
                   {"contextName": "userId", "operator": "STR_STARTS_WITH", "values": ["u"]}],
               "segments": [seg_id]}),
    )
    .await;
    assert_eq!(s.status, 200, "{}", String::from_utf8_lossy(&s.body));
    let strategy_id = s.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        post(
            &server,
            &format!("{BASE}/eu-only/environments/production/on"),
            json!({})
        )
        .await
        .status,
        200
    );

    // Region fails, userId passes, the segment fails: off, and each says so.
    let answer = play(
        &server,
        json!({"userId": "u1", "properties": {"region": "us"}}),
    )
    .await;
    assert_eq!(answer["input"]["environment"], "production");
    let f = feature(&answer, "eu-only");
    assert_eq!(f["projectId"], "default");
    assert_eq!(f["isEnabled"], false);
    assert_eq!(f["isEnabledInCurrentEnvironment"], true);
    assert_eq!(f["strategies"]["result"], false);
    let st = &f["strategies"]["data"][0];
    assert_eq!(st["id"], strategy_id.as_str());
    assert_eq!(st["name"], "flexibleRollout");
    assert_eq!(
        st["result"],
        json!({"enabled": false, "evaluationStatus": "complete"})
    );
    assert_eq!(st["constraints"][0]["contextName"], "region");
    assert_eq!(st["constraints"][0]["result"], false);
    assert_eq!(st["constraints"][1]["result"], true);
    assert_eq!(st["segments"][0]["name"], "beta");
    assert_eq!(st["segments"][0]["result"], false);
    assert_eq!(st["parameters"]["rollout"], "100");
    assert_eq!(f["variant"]["name"], "disabled");

    // Everything matches: on, with the real engine agreeing.
    let answer = play(
        &server,
        json!({"userId": "u1", "properties": {"region": "eu", "plan": "pro"}}),
    )
    .await;
    let f = feature(&answer, "eu-only");
    assert_eq!(f["isEnabled"], true, "{f}");
    assert_eq!(f["strategies"]["data"][0]["result"]["enabled"], true);
    assert_eq!(f["strategies"]["data"][0]["segments"][0]["result"], true);
    // Top-level unknown keys are properties, as in Unleash.
    let answer = play(
        &server,
        json!({"userId": "u1", "region": "eu", "plan": "pro"}),
    )
    .await;
    assert_eq!(feature(&answer, "eu-only")["isEnabled"], true);

    // A flag switched off: strategies say nothing is configured, the flag is off.
    let f = feature(&answer, "off-flag");
    assert_eq!(f["isEnabledInCurrentEnvironment"], false);
    assert_eq!(f["isEnabled"], false);
    assert_eq!(f["strategies"]["data"], json!([]));

    // A project filter.
    let r = post(
        &server,
        "/api/admin/playground",
        json!({"environment": "production", "projects": ["nope"], "context": {}}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["features"], json!([]));
}

#[tokio::test]
async fn playground_refuses_bad_requests_precisely() {
    let server = common::start().await;
    let bad = [
        (
            json!({"environment": "nope", "context": {}}),
            "unknown environment",
        ),
        (
            json!({"environment": "production", "context": {"userId": {"a": 1}}}),
            "context.userId must be a string",
        ),
        (
            json!({"environment": "production", "context": {"properties": []}}),
            "context.properties must be an object",
        ),
        (
            json!({"environment": "production", "context": {"currentTime": "yesterday"}}),
            "RFC 3339",
        ),
        (
            json!({"environment": "production", "projects": "some", "context": {}}),
            "projects must be",
        ),
        (json!({"environment": "production"}), "context"),
        (
            json!({"environment": "production", "context": {}, "extra": 1}),
            "extra",
        ),
    ];
    for (body, says) in bad {
        let r = post(&server, "/api/admin/playground", body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(e.contains(says), "{body}: {e}");
    }
    let many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("p{i}"), json!("v"))).collect();
    let r = post(
        &server,
        "/api/admin/playground",
        json!({"environment": "production", "context": {"properties": many}}),
    )
    .await;
    assert_eq!(r.status, 400);
    // Admin tokens only.
    let client = server.create_token("client", "*", "production").await;
    let r = server
        .post_json(
            "/api/admin/playground",
            &client,
            &json!({"environment": "production", "context": {}}),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = server
        .post_json(
            "/api/admin/playground",
            "*:*.wrong-wrong-wrong-wrong",
            &json!({"environment": "production", "context": {}}),
        )
        .await;
    assert_eq!(r.status, 401);
}
