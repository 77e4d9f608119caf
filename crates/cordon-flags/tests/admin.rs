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
    // The flag itself shows it too, per environment, as Unleash's admin API does.
    let flag = server.get(FLAG, ADMIN, &[]).await.json();
    let production = flag["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap()
        .clone();
    assert_eq!(production["strategies"][0]["id"], id);
    assert_eq!(production["enabled"], true);

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
    let r = server
        .post_json(
            "/api/admin/segments",
            ADMIN,
            &json!({"name": "s", "constraints": []}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_i64().unwrap();
    let segments = server.get("/api/admin/segments", ADMIN, &[]).await.json();
    let strategies = server.get(STRATEGIES, ADMIN, &[]).await.json();
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
    let strategy = |c: &Value| json!({"name": "default", "constraints": [c]});
    let segment = |c: &Value| json!({"name": "s", "constraints": [c]});
    for (body, want) in cases.into_iter().chain(
        bad_constraints()
            .iter()
            .map(|(c, want)| (strategy(c), *want)),
    ) {
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
    // The same constraints in a segment, new or replacing one.
    for (c, want) in bad_constraints() {
        let body = segment(&c);
        for r in [
            server.post_json("/api/admin/segments", ADMIN, &body).await,
            put(&server, &format!("/api/admin/segments/{id}"), &body).await,
        ] {
            assert_eq!(
                r.status,
                400,
                "{body}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let msg = r.json()["error"].as_str().unwrap().to_owned();
            assert!(msg.contains(want), "{body}: {msg}");
        }
    }
    let r = server.get("/api/admin/segments", ADMIN, &[]).await;
    assert_eq!(r.json(), segments, "the segment is as it was");
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
    let r = server.get(STRATEGIES, ADMIN, &[]).await;
    assert_eq!(r.json(), strategies, "no strategy was written");
}

/// Constraints the engine could not evaluate as written, each with what the refusal
/// must say: the constraint's context field and what is wrong with it.
fn bad_constraints() -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({"contextName": "email", "operator": "REGEX", "value": "(unclosed"}),
            "constraint on \"email\": \"(unclosed\" is not a valid regular expression",
        ),
        (
            json!({"contextName": "email", "operator": "REGEX", "value": "a{2,1}",
                "caseInsensitive": true}),
            "constraint on \"email\": \"a{2,1}\" is not a valid regular expression",
        ),
        (
            json!({"contextName": "remoteAddress", "operator": "IN_CIDR",
                "values": ["10.0.0.0/8", "not-a-cidr"]}),
            "constraint on \"remoteAddress\": \"not-a-cidr\" is not an IP address or CIDR range",
        ),
        (
            json!({"contextName": "remoteAddress", "operator": "IN_CIDR",
                "values": ["10.0.0.0/33"]}),
            "constraint on \"remoteAddress\": \"10.0.0.0/33\" is not an IP address",
        ),
        (
            json!({"contextName": "remoteAddress", "operator": "IN_CIDR", "values": []}),
            "constraint on \"remoteAddress\": IN_CIDR needs at least one value",
        ),
        (
            json!({"contextName": "userId", "operator": "STR_CONTAINS"}),
            "constraint on \"userId\": STR_CONTAINS needs at least one value",
        ),
        (
            json!({"contextName": "userId", "operator": "STR_STARTS_WITH", "values": []}),
            "constraint on \"userId\": STR_STARTS_WITH needs at least one value",
        ),
        (
            json!({"contextName": "userId", "operator": "STR_ENDS_WITH", "values": []}),
            "constraint on \"userId\": STR_ENDS_WITH needs at least one value",
        ),
    ]
}

/// What Unleash accepts is accepted: `IN`/`NOT_IN` with no values (no one is in an
/// empty list; yggdrasil compiles it so), addresses and ranges of both families, a
/// regular expression, case-insensitive.
#[tokio::test]
async fn constraints_unleash_accepts_are_accepted() {
    let (server, client) = setup().await;
    for c in [
        json!({"contextName": "userId", "operator": "IN", "values": []}),
        json!({"contextName": "userId", "operator": "NOT_IN"}),
        json!({"contextName": "remoteAddress", "operator": "IN_CIDR",
            "values": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]}),
        json!({"contextName": "email", "operator": "REGEX", "value": "^[a-z]+@example\\.com$",
            "caseInsensitive": true}),
    ] {
        let body = json!({"name": "default", "constraints": [c]});
        let r = server.post_json(STRATEGIES, ADMIN, &body).await;
        assert_eq!(r.status, 200, "{c}: {}", String::from_utf8_lossy(&r.body));
        let r = server
            .post_json(
                "/api/admin/segments",
                ADMIN,
                &json!({"name": "s", "constraints": [c]}),
            )
            .await;
        assert_eq!(r.status, 201, "{c}: {}", String::from_utf8_lossy(&r.body));
    }
    let f = client_flag(&server, &client).await;
    assert_eq!(f["strategies"].as_array().unwrap().len(), 4);
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

async fn delete(server: &common::Server, path: &str) -> common::Response {
    server
        .request("DELETE", path, &[("Authorization", ADMIN)], None)
        .await
}

#[tokio::test]
async fn segments_are_managed_and_guarded_while_in_use() {
    let (server, client) = setup().await;
    let r = server
        .post_json(
            "/api/admin/segments",
            ADMIN,
            &json!({"name": "beta-users", "description": "opted in",
                "constraints": [{"contextName": "userId", "operator": "IN", "values": ["alice"]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_i64().unwrap();
    let r = server
        .post_json(
            STRATEGIES,
            ADMIN,
            &json!({"name": "default", "segments": [id]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = server
        .get(
            "/api/client/features",
            &client,
            &[("Unleash-Client-Spec", "5.0.0")],
        )
        .await;
    assert_eq!(r.json()["segments"][0]["id"], id);

    // Editing the segment changes what every flag using it means.
    let r = put(
        &server,
        &format!("/api/admin/segments/{id}"),
        &json!({"name": "beta-users",
            "constraints": [{"contextName": "userId", "operator": "IN", "values": ["bob"]}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = server
        .get(
            "/api/client/features",
            &client,
            &[("Unleash-Client-Spec", "5.0.0")],
        )
        .await;
    assert_eq!(
        r.json()["segments"][0]["constraints"][0]["values"][0],
        "bob"
    );

    let r = delete(&server, &format!("/api/admin/segments/{id}")).await;
    assert_eq!(r.status, 409, "in use");
    assert!(r.json()["error"].as_str().unwrap().contains("checkout"));
    let r = server
        .post_json(
            "/api/admin/segments",
            ADMIN,
            &json!({"name": "bad", "constraints": [{"contextName": "x", "operator": "NOPE"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = put(&server, "/api/admin/segments/999", &json!({"name": "x"})).await;
    assert_eq!(r.status, 400, "unknown segment");

    // Once no strategy uses it, it can go.
    let strategies = server.get(STRATEGIES, ADMIN, &[]).await.json();
    let sid = strategies[0]["id"].as_str().unwrap();
    assert_eq!(
        delete(&server, &format!("{STRATEGIES}/{sid}")).await.status,
        200
    );
    assert_eq!(
        delete(&server, &format!("/api/admin/segments/{id}"))
            .await
            .status,
        200
    );
    let r = server.get("/api/admin/segments", ADMIN, &[]).await;
    assert_eq!(r.json()["segments"], json!([]));
}

#[tokio::test]
async fn environments_archive_tags_and_dependencies() {
    let (server, _client) = setup().await;
    // A new environment: every flag gets it, off; tokens can be made for it.
    let r = server
        .post_json(
            "/api/admin/environments",
            ADMIN,
            &json!({"name": "staging", "type": "test"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = server
        .post_json(
            "/api/admin/environments",
            ADMIN,
            &json!({"name": "staging"}),
        )
        .await;
    assert_eq!(r.status, 409);
    let staging = server.create_token("client", "*", "staging").await;
    let r = server
        .get("/api/client/features/checkout", &staging, &[])
        .await;
    assert_eq!(r.json()["enabled"], false);

    // Dependencies show in the client API; a cycle or a second level is refused.
    let r = server
        .post_json(
            "/api/admin/projects/default/features",
            ADMIN,
            &json!({"name": "checkout-banner"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let deps = "/api/admin/projects/default/features/checkout-banner/dependencies";
    let r = server
        .post_json(
            deps,
            ADMIN,
            &json!({"feature": "checkout", "enabled": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = server
        .get("/api/client/features/checkout-banner", &staging, &[])
        .await;
    assert_eq!(r.json()["dependencies"][0]["feature"], "checkout");
    let r = server
        .post_json(
            "/api/admin/projects/default/features/checkout/dependencies",
            ADMIN,
            &json!({"feature": "checkout-banner"}),
        )
        .await;
    assert_eq!(r.status, 400, "one level deep");
    let r = server
        .post_json(deps, ADMIN, &json!({"feature": "checkout-banner"}))
        .await;
    assert_eq!(r.status, 400, "not on itself");
    assert_eq!(
        delete(&server, &format!("{deps}/checkout")).await.status,
        200
    );

    // Tags.
    let tags = "/api/admin/features/checkout/tags";
    let r = server
        .post_json(
            tags,
            ADMIN,
            &json!({"type": "owner", "value": "agent:claude"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = server
        .post_json(
            tags,
            ADMIN,
            &json!({"type": "owner", "value": "agent:claude"}),
        )
        .await;
    assert_eq!(r.status, 200, "already tagged");
    let r = server.get(tags, ADMIN, &[]).await;
    assert_eq!(
        r.json()["tags"],
        json!([{"type": "owner", "value": "agent:claude"}])
    );
    assert_eq!(
        delete(&server, &format!("{tags}/owner/agent:claude"))
            .await
            .status,
        200
    );
    assert_eq!(
        delete(&server, &format!("{tags}/owner/agent:claude"))
            .await
            .status,
        404
    );

    // Archive, revive (off everywhere), archive, delete for good.
    assert_eq!(delete(&server, FLAG).await.status, 202, "archived");
    let r = server.get("/api/admin/archive/features", ADMIN, &[]).await;
    assert_eq!(r.json()["features"][0]["name"], "checkout");
    let r = server
        .post_json("/api/admin/archive/revive/checkout", ADMIN, &json!({}))
        .await;
    assert_eq!(r.status, 200);
    let r = server.get(FLAG, ADMIN, &[]).await;
    assert!(
        r.json()["environments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["enabled"] == false),
        "revived dark: {}",
        r.json()
    );
    assert_eq!(
        delete(&server, "/api/admin/archive/checkout").await.status,
        404,
        "only archived flags can be deleted"
    );
    assert_eq!(delete(&server, FLAG).await.status, 202, "archived");
    assert_eq!(
        delete(&server, "/api/admin/archive/checkout").await.status,
        200
    );
    assert_eq!(server.get(FLAG, ADMIN, &[]).await.status, 404);
    let r = server
        .get("/api/admin/events?feature=checkout&limit=1", ADMIN, &[])
        .await;
    assert_eq!(r.json()["events"][0]["type"], "feature-deleted");
    let r = server.get("/api/admin/audit/verify", ADMIN, &[]).await;
    assert_eq!(r.json()["problems"], json!([]));
}

#[tokio::test]
async fn the_frontend_api_fills_remote_address_from_the_connection() {
    let server = common::start().await;
    let state = json!({"version": 2, "features": [{
        "name": "office-only", "enabled": true,
        "strategies": [{"name": "remoteAddress", "parameters": {"IPs": common::CLIENT_IP}}]
    }]});
    assert_eq!(server.import("production", &state).await.status, 202);
    let frontend = server.create_token("frontend", "*", "production").await;
    let on = |r: &common::Response| {
        r.json()["toggles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "office-only")
    };
    let r = server.get("/api/frontend", &frontend, &[]).await;
    assert!(on(&r), "the caller is {}: {}", common::CLIENT_IP, r.json());
    let r = server
        .post_json(
            "/api/frontend",
            &frontend,
            &json!({"remoteAddress": "10.1.2.3"}),
        )
        .await;
    assert!(!on(&r), "an explicit remoteAddress wins");
    let r = server
        .request(
            "GET",
            "/api/frontend",
            &[
                ("Authorization", &frontend),
                ("X-Forwarded-For", "10.1.2.3"),
            ],
            None,
        )
        .await;
    assert!(on(&r), "forwarding headers are not trusted");
}

#[tokio::test]
async fn a_token_for_several_projects_sees_exactly_those() {
    let server = common::start().await;
    let state = json!({"version": 2, "features": [
        {"name": "in-a", "project": "a", "enabled": true, "strategies": []},
        {"name": "in-b", "project": "b", "enabled": true, "strategies": []},
        {"name": "in-c", "project": "c", "enabled": true, "strategies": []}
    ]});
    assert_eq!(server.import("production", &state).await.status, 202);
    let r = server
        .post_json(
            "/api/admin/api-tokens",
            ADMIN,
            &json!({"tokenName": "ab", "type": "client", "environment": "production",
                "projects": ["b", "a", "a"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["projects"], json!(["a", "b"]));
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("[]:production."),
        "Unleash's format: {secret}"
    );
    let r = server.get("/api/client/features", &secret, &[]).await;
    let mut names: Vec<String> = r.json()["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["in-a", "in-b"]);
    let r = server.get("/api/client/features/in-c", &secret, &[]).await;
    assert_eq!(r.status, 404);
    let r = server.get("/api/admin/api-tokens", ADMIN, &[]).await;
    assert!(
        r.json()["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["projects"] == json!(["a", "b"]))
    );
    for bad in [json!([]), json!(["a,b"])] {
        let r = server
            .post_json(
                "/api/admin/api-tokens",
                ADMIN,
                &json!({"tokenName": "x", "type": "client", "environment": "production", "projects": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

/// Unleash's update body, as its console and SDK-side tools send it back (a flag as
/// `GET` answered it, with `name` and `createdAt`): accepted; `name` must be the
/// flag's; `archived: true` archives as Unleash's update does; refusals write nothing.
#[tokio::test]
async fn a_flag_update_takes_unleashs_body() {
    let (server, client) = setup().await;
    let r = put(
        &server,
        FLAG,
        &json!({"name": "checkout", "description": "as Unleash sends it", "type": "release",
                "stale": false, "impressionData": true, "archived": false,
                "createdAt": "2024-01-01T00:00:00.000Z"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let f = server.get(FLAG, ADMIN, &[]).await.json();
    assert_eq!(f["description"], "as Unleash sends it");
    assert_eq!(f["impressionData"], true);
    assert_eq!(f.get("createdAt"), None, "createdAt is ignored, not stored");
    // An empty name is no name, as in Unleash.
    assert_eq!(
        put(&server, FLAG, &json!({"name": "", "stale": true}))
            .await
            .status,
        200
    );

    let events = event_count(&server).await;
    for body in [
        json!({"name": "renamed", "description": "never stored"}),
        json!({"name": "checkout", "archived": "yes"}),
        json!({"name": "checkout", "owner": "me"}),
    ] {
        let r = put(&server, FLAG, &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.json()["error"].is_string(), "{body}");
    }
    let r = put(&server, FLAG, &json!({"name": "renamed"})).await;
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("renamed") && error.contains("cannot be renamed"),
        "{error}"
    );
    assert_eq!(event_count(&server).await, events, "refusals write nothing");
    assert_eq!(
        server.get(FLAG, ADMIN, &[]).await.json()["description"],
        "as Unleash sends it"
    );

    // archived: true archives the flag with the update, in one change.
    let r = put(
        &server,
        FLAG,
        &json!({"name": "checkout", "description": "retired", "archived": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(server.get(FLAG, ADMIN, &[]).await.status, 404);
    let r = server
        .get("/api/client/features/checkout", &client, &[])
        .await;
    assert_eq!(r.status, 404, "gone from the client API");
    let archived = server.get("/api/admin/archive/features", ADMIN, &[]).await;
    assert_eq!(archived.json()["features"][0]["name"], "checkout");
    assert_eq!(archived.json()["features"][0]["description"], "retired");
    let r = server
        .get("/api/admin/events?feature=checkout&limit=2", ADMIN, &[])
        .await;
    let events = r.json();
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["feature-archived", "feature-updated"],
        "newest first"
    );
    // An archived flag is not updated (revive it first).
    assert_eq!(
        put(&server, FLAG, &json!({"description": "x"}))
            .await
            .status,
        404
    );
}

fn rfc3339_in(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    cordon_flags::metrics::rfc3339(now + ms)
}

/// `expiresAt` on `POST /api/admin/api-tokens`, as Unleash takes it: stored, listed,
/// and enforced (an expired token is refused like an unknown one, and still listed
/// until deleted); a time that does not parse or is past is a `400`.
#[tokio::test]
async fn api_tokens_expire_at_expires_at() {
    let server = common::start().await;
    let create = |body: Value| {
        let server = &server;
        async move {
            server
                .post_json("/api/admin/api-tokens", ADMIN, &body)
                .await
        }
    };
    let soon = rfc3339_in(1_500);
    let r = create(json!({"tokenName": "short-lived", "type": "client",
        "environment": "development", "expiresAt": soon}))
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    let client = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["expiresAt"], soon);
    let r = create(json!({"tokenName": "short-admin", "type": "admin", "expiresAt": soon})).await;
    assert_eq!(r.status, 201);
    let admin = r.json()["secret"].as_str().unwrap().to_owned();
    let lasting = server.create_token("client", "*", "development").await;

    assert_eq!(
        server
            .get("/api/client/features", &client, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        server.get("/api/admin/projects", &admin, &[]).await.status,
        200
    );
    let listed = server.get("/api/admin/api-tokens", ADMIN, &[]).await.json();
    let expiry = |name: &str| {
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tokenName"] == name)
            .map(|t| t["expiresAt"].clone())
            .unwrap()
    };
    assert_eq!(expiry("short-lived"), soon);
    assert_eq!(
        expiry("test"),
        Value::Null,
        "no expiresAt when it does not expire"
    );

    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    for (token, path) in [
        (&client, "/api/client/features"),
        (&admin, "/api/admin/projects"),
    ] {
        let r = server.get(path, token, &[]).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("expired"),
            "{}",
            r.json()
        );
    }
    assert_eq!(
        server
            .get("/api/client/features", &lasting, &[])
            .await
            .status,
        200
    );
    // Creating another expiring token does not sweep expired API tokens away.
    let r = create(json!({"tokenName": "later", "type": "frontend",
        "environment": "development", "expiresAt": rfc3339_in(3_600_000)}))
    .await;
    assert_eq!(r.status, 201);
    let listed = server.get("/api/admin/api-tokens", ADMIN, &[]).await.json();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tokenName"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"short-lived"), "{names:?}");
    let r = server
        .request(
            "DELETE",
            &format!("/api/admin/api-tokens/{client}"),
            &[("Authorization", ADMIN)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "an expired token can be deleted");

    let events = event_count(&server).await;
    for bad in ["tomorrow", "2020-01-01T00:00:00Z", "2027-13-01T00:00:00Z"] {
        let r = create(json!({"tokenName": "bad", "type": "client",
            "environment": "development", "expiresAt": bad}))
        .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("expiresAt"),
            "{bad}: {}",
            r.json()
        );
    }
    assert_eq!(event_count(&server).await, events, "refusals write nothing");
}
