//! The admin API at Unleash's paths: strategies, variants, flag metadata, projects,
//! tokens and events; bad input is a precise 4xx and writes nothing.

mod common;

use common::ADMIN;
use serde_json::{Value, json};

const FLAG: &str = "/api/admin/projects/default/features/checkout";
const STRATEGIES: &str =
    "/api/admin/projects/default/features/checkout/environments/production/strategies";

async fn event_count(server: &common::Server) -> u64 {
    let r = server.get("/api/admin/events?limit=1", ADMIN, &[]).await;
    assert_eq!(r.status, 200);
    r.json()["totalEvents"].as_u64().unwrap()
}

async fn setup() -> (common::Server, String) {
    let server = common::start().await;
    let r = server
        .post_json(
            "/api/admin/projects/default/features",
            ADMIN,
            &json!({"name": "checkout"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = server
        .post_json(
            &format!("{FLAG}/environments/production/on"),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200);
    let client = server.create_token("client", "*", "production").await;
    (server, client)
}

async fn client_flag(server: &common::Server, client: &str) -> Value {
    let r = server
        .get("/api/client/features/checkout", client, &[])
        .await;
    assert_eq!(r.status, 200);
    r.json()
}

async fn put(server: &common::Server, path: &str, body: &Value) -> common::Response {
    let b = serde_json::to_vec(body).unwrap();
    server
        .request("PUT", path, &[("Authorization", ADMIN)], Some(&b))
        .await
}

#[tokio::test]
async fn strategies_are_added_listed_replaced_and_removed() {
    let (server, client) = setup().await;
    let r = server
        .post_json(
            STRATEGIES,
            ADMIN,
            &json!({
                "name": "flexibleRollout",
                "title": "a quarter of users",
                "parameters": {"rollout": 25, "stickiness": "userId", "groupId": "checkout"},
                "constraints": [{"contextName": "region", "operator": "IN", "values": ["eu"]}]
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(r.json()["parameters"]["rollout"], "25");

    // The client API serves it at once.
    let f = client_flag(&server, &client).await;
    assert_eq!(f["strategies"][0]["name"], "flexibleRollout");
    assert_eq!(f["strategies"][0]["constraints"][0]["values"][0], "eu");

    let r = server.get(STRATEGIES, ADMIN, &[]).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(r.json()[0]["id"], id);

    let r = put(
        &server,
        &format!("{STRATEGIES}/{id}"),
        &json!({"name": "userWithId", "parameters": {"userIds": "alice,bob"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        client_flag(&server, &client).await["strategies"][0]["name"],
        "userWithId"
    );

    let r = server
        .request(
            "DELETE",
            &format!("{STRATEGIES}/{id}"),
            &[("Authorization", ADMIN)],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        client_flag(&server, &client).await["strategies"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Every step is an event naming the flag, newest first.
    let r = server
        .get("/api/admin/events?feature=checkout", ADMIN, &[])
        .await;
    let types: Vec<String> = r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types[..3],
        [
            "feature-strategy-remove",
            "feature-strategy-update",
            "feature-strategy-add"
        ]
    );
    let add = &r.json()["events"][2];
    assert_eq!(add["environment"], "production");
    assert_eq!(add["preData"]["strategies"], json!([]));
    assert_eq!(add["data"]["strategies"][0]["name"], "flexibleRollout");
    assert_eq!(
        add["createdBy"], "admin:admin",
        "the token type and name that did it"
    );
}

#[tokio::test]
async fn bad_strategies_are_refused_precisely_and_write_nothing() {
    let (server, client) = setup().await;
    let before = event_count(&server).await;
    let cases = [
        (
            json!({"name": "default", "constraints": [{"contextName": "x", "operator": "LIKE", "values": ["a"]}]}),
            "unknown constraint operator",
        ),
        (
            json!({"name": "flexibleRollout", "parameters": {"rollout": 150}}),
            "rollout must be",
        ),
        (
            json!({"name": "default", "segments": [99]}),
            "no segment with id 99",
        ),
        (json!({"name": "default", "colour": "red"}), "unknown field"),
        (json!({"name": ""}), "needs a name"),
        (
            json!({"name": "default", "disabled": true}),
            "not supported",
        ),
        (
            json!({"name": "default", "parameters": {"rollout": {"nested": 1}}}),
            "string or a number",
        ),
        (
            json!({"name": "default", "constraints": [{"contextName": "x", "operator": "IN",
                "values": vec!["v"; 1001]}]}),
            "at most 1000 values",
        ),
    ];
    for (body, want) in cases {
        let r = server.post_json(STRATEGIES, ADMIN, &body).await;
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let r = server
        .post_json(STRATEGIES, &client, &json!({"name": "default"}))
        .await;
    assert_eq!(r.status, 403);
    let r = server
        .post_json(
            "/api/admin/projects/default/features/nope/environments/production/strategies",
            ADMIN,
            &json!({"name": "default"}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = put(
        &server,
        &format!("{STRATEGIES}/00000000-0000-4000-8000-000000000000"),
        &json!({"name": "default"}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("no strategy"));
    assert_eq!(
        event_count(&server).await,
        before,
        "no failure wrote an event"
    );
}

#[tokio::test]
async fn variants_and_flag_metadata() {
    let (server, client) = setup().await;
    let r = put(
        &server,
        &format!("{FLAG}/environments/production/variants"),
        &json!([
            {"name": "blue", "weight": 500, "weightType": "variable", "stickiness": "default"},
            {"name": "green", "weight": 500, "weightType": "variable", "stickiness": "default",
             "payload": {"type": "string", "value": "g"}}
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let f = client_flag(&server, &client).await;
    assert_eq!(f["variants"].as_array().unwrap().len(), 2);
    let r = put(
        &server,
        &format!("{FLAG}/environments/production/variants"),
        &json!([{"name": "x", "weight": 5000}]),
    )
    .await;
    assert_eq!(r.status, 400);

    let r = put(
        &server,
        FLAG,
        &json!({"description": "new checkout", "stale": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = server.get(FLAG, ADMIN, &[]).await;
    assert_eq!(r.json()["description"], "new checkout");
    assert_eq!(r.json()["stale"], true);
    assert_eq!(client_flag(&server, &client).await["stale"], true);
    let r = put(&server, FLAG, &json!({"owner": "me"})).await;
    assert_eq!(r.status, 400);

    let r = server
        .get(&format!("{FLAG}/environments/production"), ADMIN, &[])
        .await;
    assert_eq!(r.json()["enabled"], true);
    assert_eq!(r.json()["variants"][1]["payload"]["value"], "g");
}

#[tokio::test]
async fn projects_tokens_and_revocation() {
    let (server, client) = setup().await;
    let r = server
        .post_json("/api/admin/projects", ADMIN, &json!({"id": "payments"}))
        .await;
    assert_eq!(r.status, 201);
    let r = server
        .post_json("/api/admin/projects", ADMIN, &json!({"id": "payments"}))
        .await;
    assert_eq!(r.status, 409);
    let r = server
        .post_json("/api/admin/projects", ADMIN, &json!({"id": "a.b"}))
        .await;
    assert_eq!(r.status, 400);
    let r = server.get("/api/admin/projects", ADMIN, &[]).await;
    let ids: Vec<String> = r.json()["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["default", "payments"]);
    let r = server
        .post_json(
            "/api/admin/projects/payments/features",
            ADMIN,
            &json!({"name": "refunds"}),
        )
        .await;
    assert_eq!(r.status, 201);

    // Tokens: listed without secrets; a revoked token stops working at once.
    let r = server.get("/api/admin/api-tokens", ADMIN, &[]).await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!body.contains(&client), "secrets are never listed");
    assert_eq!(r.json()["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(client_flag(&server, &client).await["name"], "checkout");
    let path = format!("/api/admin/api-tokens/{client}");
    let r = server
        .request("DELETE", &path, &[("Authorization", ADMIN)], None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = server.get("/api/client/features", &client, &[]).await;
    assert_eq!(r.status, 401, "revoked");
    let r = server
        .request("DELETE", &path, &[("Authorization", ADMIN)], None)
        .await;
    assert_eq!(r.status, 404);
    // The last admin token cannot be deleted.
    let r = server
        .request(
            "DELETE",
            &format!("/api/admin/api-tokens/{ADMIN}"),
            &[("Authorization", ADMIN)],
            None,
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        server.get("/api/admin/projects", ADMIN, &[]).await.status,
        200
    );

    let r = server.get("/api/admin/audit/verify", ADMIN, &[]).await;
    assert_eq!(r.json()["problems"], json!([]), "{}", r.json());
}
