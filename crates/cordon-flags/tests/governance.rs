//! Four-eyes change requests, roles, agents and console logins, through the HTTP API
//! at Unleash's paths, on either store (`CORDON_FLAGS_TEST_STORE`).

mod common;

use common::{ADMIN, Server};
use serde_json::{Value, json};

const PROJECT: &str = "/api/admin/projects/default";

async fn put(server: &Server, path: &str, token: &str, body: &Value) -> common::Response {
    let b = serde_json::to_vec(body).unwrap();
    server
        .request("PUT", path, &[("Authorization", token)], Some(&b))
        .await
}

fn text(r: &common::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Create a user with a password, log in, and return the session token.
async fn user(server: &Server, name: &str, role: &str) -> String {
    let password = format!("{name}-long-password");
    let r = server
        .post_json(
            "/api/admin/user-admin",
            ADMIN,
            &json!({"username": name, "role": role, "password": password}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let r = server
        .request(
            "POST",
            "/api/admin/login",
            &[],
            Some(
                serde_json::to_vec(&json!({"username": name, "password": password}))
                    .unwrap()
                    .as_slice(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn agent(server: &Server, name: &str, session: &str) -> String {
    let r = server
        .post_json(
            "/api/admin/agents",
            ADMIN,
            &json!({"name": name, "session": session}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    r.json()["secret"].as_str().unwrap().to_owned()
}

async fn flag(server: &Server, name: &str, token: &str) {
    let r = server
        .post_json(
            &format!("{PROJECT}/features"),
            token,
            &json!({"name": name}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
}

async fn protect(server: &Server, environment: &str, approvals: i64) {
    let r = put(
        server,
        &format!("{PROJECT}/environments/{environment}/change-requests/config"),
        ADMIN,
        &json!({"changeRequestsEnabled": true, "requiredApprovals": approvals}),
    )
    .await;
    assert_eq!(r.status, 204, "{}", text(&r));
}

/// Open a change request in production with `changes` and submit it for review; its
/// id.
async fn open(server: &Server, token: &str, changes: Value) -> i64 {
    open_in(server, "production", token, changes).await
}

async fn open_in(server: &Server, environment: &str, token: &str, changes: Value) -> i64 {
    let r = server
        .post_json(
            &format!("{PROJECT}/environments/{environment}/change-requests"),
            token,
            &changes,
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.json()["state"], "Draft");
    let r = state(server, token, id, json!({"state": "In review"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "In review");
    id
}

async fn state(server: &Server, token: &str, id: i64, body: Value) -> common::Response {
    put(
        server,
        &format!("{PROJECT}/change-requests/{id}/state"),
        token,
        &body,
    )
    .await
}

async fn approve(server: &Server, token: &str, id: i64) -> common::Response {
    state(server, token, id, json!({"state": "Approved"})).await
}

async fn enabled_in_production(server: &Server, name: &str) -> bool {
    let r = server
        .get(
            &format!("{PROJECT}/features/{name}/environments/production"),
            ADMIN,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    r.json()["enabled"].as_bool().unwrap()
}

async fn events(server: &Server) -> Vec<Value> {
    let r = server.get("/api/admin/events?limit=1000", ADMIN, &[]).await;
    assert_eq!(r.status, 200);
    r.json()["events"].as_array().unwrap().clone()
}

async fn chain_verifies(server: &Server) {
    let r = server.get("/api/admin/audit/verify", ADMIN, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["problems"], json!([]), "{}", r.json());
}

fn enable(feature: &str) -> Value {
    json!({"feature": feature, "action": "updateEnabled", "payload": {"enabled": true}})
}

#[tokio::test]
async fn nobody_approves_their_own_request_and_two_people_turn_a_flag_on() {
    let server = common::start().await;
    protect(&server, "production", 1).await;
    let viewer = user(&server, "vic", "viewer").await;
    let editor = user(&server, "ed", "editor").await;
    let approver = user(&server, "ann", "approver").await;
    let admin = user(&server, "ada", "admin").await;
    let other_approver = user(&server, "otto", "approver").await;

    for (author, name) in [(&editor, "ed"), (&approver, "ann"), (&admin, "ada")] {
        let f = format!("feature-by-{name}");
        flag(&server, &f, author).await;
        let id = open(&server, author, enable(&f)).await;
        let r = approve(&server, author, id).await;
        assert_eq!(r.status, 403, "{name} approved their own request");
        // An editor may not approve at all; approvers and admins not their own.
        let why = if name == "ed" {
            "may not approve"
        } else {
            "your own"
        };
        assert!(text(&r).contains(why), "{}", text(&r));
        // Neither a viewer, an editor, nor a service token (not a person) approves.
        for (who, token) in [("viewer", &viewer), ("service", &ADMIN.to_owned())] {
            let r = approve(&server, token, id).await;
            assert_eq!(r.status, 403, "{who} approved");
        }
        if name != "ed" {
            let r = approve(&server, &editor, id).await;
            assert_eq!(r.status, 403, "an editor approved");
        }
        // Not applied before approval.
        let r = state(&server, author, id, json!({"state": "Applied"})).await;
        assert_eq!(r.status, 409, "{}", text(&r));
        assert!(!enabled_in_production(&server, &f).await);
        let r = approve(&server, &other_approver, id).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(r.json()["state"], "Approved");
        // The diff shows what will change.
        let before = &r.json()["features"][0]["before"];
        let after = &r.json()["features"][0]["after"];
        assert_eq!(
            (before["enabled"].clone(), after["enabled"].clone()),
            (json!(false), json!(true))
        );
        // Viewers cannot apply; the author can.
        assert_eq!(
            state(&server, &viewer, id, json!({"state": "Applied"}))
                .await
                .status,
            403
        );
        let r = state(&server, author, id, json!({"state": "Applied"})).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(r.json()["state"], "Applied");
        assert!(enabled_in_production(&server, &f).await);
        // Closed requests stay closed.
        assert_eq!(
            state(&server, author, id, json!({"state": "Cancelled"}))
                .await
                .status,
            409
        );
    }
    // The client API serves the applied state.
    let client = server.create_token("client", "*", "production").await;
    let r = server.get("/api/client/features", &client, &[]).await;
    let body = r.json();
    let on: Vec<&str> = body["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["enabled"] == true)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(on.len(), 3, "{on:?}");

    let types: Vec<String> = events(&server)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "change-request-created",
        "change-request-submitted",
        "change-request-approved",
        "change-request-applied",
        "feature-changed-by-change-request",
        "user-created",
        "change-request-settings-updated",
    ] {
        assert!(types.iter().any(|x| x == t), "no {t} event in {types:?}");
    }
    chain_verifies(&server).await;
}

#[tokio::test]
async fn protected_environments_refuse_direct_changes_but_kill_always_works() {
    let server = common::start().await;
    flag(&server, "checkout", ADMIN).await;
    let on = format!("{PROJECT}/features/checkout/environments/production/on");
    let off = format!("{PROJECT}/features/checkout/environments/production/off");
    assert_eq!(server.post_json(&on, ADMIN, &json!({})).await.status, 200);
    protect(&server, "production", 1).await;
    let editor = user(&server, "ed", "editor").await;
    let bot = agent(&server, "claude", "run-42").await;

    let strategies = format!("{PROJECT}/features/checkout/environments/production/strategies");
    let variants = format!("{PROJECT}/features/checkout/environments/production/variants");
    for r in [
        server
            .post_json(&strategies, &editor, &json!({"name": "default"}))
            .await,
        put(
            &server,
            &variants,
            &editor,
            &json!([{"name": "a", "weight": 1000}]),
        )
        .await,
        server
            .delete(&format!("{PROJECT}/features/checkout"), &editor)
            .await,
        server
            .post_json(
                "/api/admin/state/import?environment=production",
                ADMIN,
                &json!({"version": 2, "features": []}),
            )
            .await,
    ] {
        assert_eq!(r.status, 409, "{}", text(&r));
        assert!(
            text(&r).contains("/environments/production/change-requests"),
            "{}",
            text(&r)
        );
    }
    // Development is not protected.
    let dev_on = format!("{PROJECT}/features/checkout/environments/development/on");
    assert_eq!(
        server.post_json(&dev_on, &editor, &json!({})).await.status,
        200
    );

    // Break-glass: an agent kills the flag in production, no request needed.
    let r = server.post_json(&off, &bot, &json!({})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(!enabled_in_production(&server, "checkout").await);
    // Turning it back on needs a request.
    let r = server.post_json(&on, &editor, &json!({})).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    let r = server.post_json(&on, ADMIN, &json!({})).await;
    assert_eq!(r.status, 409, "not even an admin token skips four eyes");

    let all = events(&server).await;
    let kill = all
        .iter()
        .find(|e| e["type"] == "feature-environment-disabled")
        .unwrap();
    assert_eq!(kill["data"]["breakGlass"], true, "{kill}");
    assert_eq!(kill["createdBy"], "agent:claude session=run-42");
    chain_verifies(&server).await;
}

#[tokio::test]
async fn editing_a_request_revokes_its_approvals() {
    let server = common::start().await;
    flag(&server, "search", ADMIN).await;
    protect(&server, "production", 2).await;
    let author = user(&server, "ed", "editor").await;
    let ann = user(&server, "ann", "approver").await;
    let otto = user(&server, "otto", "approver").await;
    let id = open(
        &server,
        &author,
        json!([enable("search"), {"feature": "search", "action": "addStrategy",
               "payload": {"name": "flexibleRollout", "parameters": {"rollout": "10", "stickiness": "default", "groupId": "search"}}}]),
    )
    .await;
    let r = approve(&server, &ann, id).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "In review", "one of two approvals");
    assert_eq!(
        approve(&server, &ann, id).await.status,
        409,
        "approvals are unique"
    );
    // The author raises the rollout: the approval no longer stands.
    let r = put(
        &server,
        &format!("{PROJECT}/change-requests/{id}/changes/2"),
        &author,
        &json!({"feature": "search", "action": "addStrategy",
                "payload": {"name": "flexibleRollout", "parameters": {"rollout": "100", "stickiness": "default", "groupId": "search"}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["approvals"], json!([]));
    assert_eq!(r.json()["state"], "In review");
    // Only the author edits.
    let r = server
        .delete(&format!("{PROJECT}/change-requests/{id}/changes/1"), &ann)
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));

    assert_eq!(
        approve(&server, &ann, id).await.json()["state"],
        "In review"
    );
    let r = approve(&server, &otto, id).await;
    assert_eq!(r.json()["state"], "Approved", "{}", text(&r));
    // Dropping a change of an approved request sends it back to review.
    let r = server
        .delete(
            &format!("{PROJECT}/change-requests/{id}/changes/2"),
            &author,
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "In review");
    assert_eq!(r.json()["approvals"], json!([]));
    assert_eq!(
        state(&server, &author, id, json!({"state": "Applied"}))
            .await
            .status,
        409
    );
    let types: Vec<Value> = events(&server)
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert!(types.contains(&json!("change-request-approvals-revoked")));
    chain_verifies(&server).await;
}

async fn poll_state(server: &Server, id: i64, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let r = server
            .get(&format!("{PROJECT}/change-requests/{id}"), ADMIN, &[])
            .await;
        if want(&r.json()) {
            return r.json();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("change request {id} never reached the expected state");
}

#[tokio::test]
async fn scheduled_requests_apply_on_time_and_are_suspended_by_conflicting_edits() {
    let server = common::start().await;
    flag(&server, "banner", ADMIN).await;
    flag(&server, "promo", ADMIN).await;
    for f in ["banner", "promo"] {
        let on = format!("{PROJECT}/features/{f}/environments/production/on");
        assert_eq!(server.post_json(&on, ADMIN, &json!({})).await.status, 200);
    }
    protect(&server, "production", 1).await;
    let author = user(&server, "ed", "editor").await;
    let ann = user(&server, "ann", "approver").await;
    let rollout = |f: &str| {
        json!({"feature": f, "action": "addStrategy",
               "payload": {"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "default", "groupId": f}}})
    };
    let soon = cordon_flags::metrics::rfc3339(now_ms() + 1500);
    let later = cordon_flags::metrics::rfc3339(now_ms() + 3_600_000);

    let first = open(&server, &author, rollout("banner")).await;
    assert_eq!(approve(&server, &ann, first).await.status, 200);
    let r = state(
        &server,
        &author,
        first,
        json!({"state": "Scheduled", "scheduledAt": soon}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["schedule"]["status"], "pending");

    let second = open(&server, &author, rollout("promo")).await;
    assert_eq!(approve(&server, &ann, second).await.status, 200);
    let r = state(
        &server,
        &author,
        second,
        json!({"state": "Scheduled", "scheduledAt": later}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    // Someone kills promo meanwhile: the schedule must not bring a different state.
    let off = format!("{PROJECT}/features/promo/environments/production/off");
    assert_eq!(
        server.post_json(&off, &author, &json!({})).await.status,
        200
    );

    let applied = poll_state(&server, first, |v| v["state"] == "Applied").await;
    assert_eq!(
        applied["diff"][0]["after"]["strategies"][0]["name"],
        "flexibleRollout"
    );
    let suspended = poll_state(&server, second, |v| v["schedule"]["status"] == "suspended").await;
    assert_eq!(suspended["state"], "Scheduled");
    // Applying it by hand is refused too, until it is reviewed again.
    let r = state(&server, &author, second, json!({"state": "Applied"})).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    let r = server
        .get(
            &format!("{PROJECT}/features/promo/environments/production"),
            ADMIN,
            &[],
        )
        .await;
    assert_eq!(r.json()["strategies"], json!([]));
    let r = state(&server, &author, second, json!({"state": "In review"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["approvals"], json!([]));
    assert_eq!(r.json()["schedule"], Value::Null);
    let types: Vec<Value> = events(&server)
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert!(types.contains(&json!("change-request-schedule-suspended")));
    assert!(types.contains(&json!("change-request-scheduled")));
    chain_verifies(&server).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn agents_propose_but_never_approve_apply_or_enable_in_production() {
    let server = common::start().await;
    protect(&server, "production", 1).await;
    let bot = agent(&server, "claude", "run-7").await;
    let human = user(&server, "ed", "editor").await;
    let ann = user(&server, "ann", "approver").await;

    flag(&server, "ai-feature", &bot).await;
    let r = server
        .get(&format!("{PROJECT}/features/ai-feature"), &bot, &[])
        .await;
    assert!(
        r.json()["environments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["enabled"] == false),
        "{}",
        r.json()
    );
    let on = format!("{PROJECT}/features/ai-feature/environments/production/on");
    let r = server.post_json(&on, &bot, &json!({})).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    // Development is the agent's to play with.
    let dev = format!("{PROJECT}/features/ai-feature/environments/development/on");
    assert_eq!(server.post_json(&dev, &bot, &json!({})).await.status, 200);

    let mine = open(&server, &bot, enable("ai-feature")).await;
    flag(&server, "human-feature", &human).await;
    let theirs = open(&server, &human, enable("human-feature")).await;
    for id in [mine, theirs] {
        let r = approve(&server, &bot, id).await;
        assert_eq!(r.status, 403, "{}", text(&r));
        assert!(text(&r).contains("agent"), "{}", text(&r));
    }
    assert_eq!(approve(&server, &ann, mine).await.status, 200);
    let r = state(&server, &bot, mine, json!({"state": "Applied"})).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    let r = state(
        &server,
        &bot,
        mine,
        json!({"state": "Scheduled", "scheduledAt": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(r.status, 403);
    // Agents administer nothing.
    for r in [
        server
            .post_json("/api/admin/agents", &bot, &json!({"name": "twin"}))
            .await,
        server
            .post_json(
                "/api/admin/user-admin",
                &bot,
                &json!({"username": "x", "role": "admin"}),
            )
            .await,
        put(
            &server,
            &format!("{PROJECT}/environments/production/change-requests/config"),
            &bot,
            &json!({"changeRequestsEnabled": false}),
        )
        .await,
        server
            .post_json("/api/admin/user/tokens", &bot, &json!({}))
            .await,
    ] {
        assert_eq!(r.status, 403, "{}", text(&r));
    }
    // A human applies what another human approved.
    let r = state(&server, &human, mine, json!({"state": "Applied"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(enabled_in_production(&server, "ai-feature").await);

    let all = events(&server).await;
    let created = all
        .iter()
        .find(|e| e["type"] == "feature-created" && e["featureName"] == "ai-feature")
        .unwrap();
    assert_eq!(created["createdBy"], "agent:claude session=run-7");
    let opened = all
        .iter()
        .find(|e| e["type"] == "change-request-created" && e["data"]["changeRequest"] == mine)
        .unwrap();
    assert_eq!(opened["createdBy"], "agent:claude session=run-7");
    chain_verifies(&server).await;
}

#[tokio::test]
async fn logins_roles_and_sessions() {
    let server = common::start().await;
    let viewer = user(&server, "vic", "viewer").await;
    let r = server.get("/api/admin/user", &viewer, &[]).await;
    assert_eq!(r.json()["role"], "viewer");
    assert_eq!(r.json()["kind"], "user");
    // Viewers read but do not write.
    assert_eq!(
        server
            .get(&format!("{PROJECT}/features"), &viewer, &[])
            .await
            .status,
        200
    );
    let r = server
        .post_json(
            &format!("{PROJECT}/features"),
            &viewer,
            &json!({"name": "x"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));

    let login = |body: Value| {
        let server = &server;
        async move {
            server
                .request(
                    "POST",
                    "/api/admin/login",
                    &[],
                    Some(serde_json::to_vec(&body).unwrap().as_slice()),
                )
                .await
        }
    };
    // A wrong password and an unknown user get the same answer.
    let wrong = login(json!({"username": "vic", "password": "not-the-password"})).await;
    let unknown = login(json!({"username": "nobody", "password": "not-the-password"})).await;
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(wrong.body, unknown.body);
    for _ in 0..4 {
        login(json!({"username": "vic", "password": "guess-guess-guess"})).await;
    }
    let r = login(json!({"username": "vic", "password": "vic-long-password"})).await;
    assert_eq!(r.status, 429, "{}", text(&r));

    // A personal token logs in too; service tokens and agents do not.
    let ed = user(&server, "ed", "editor").await;
    let r = server
        .post_json(
            "/api/admin/user/tokens",
            &ed,
            &json!({"description": "laptop"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let pat = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(r.json().get("expiresAt").is_none(), "{}", r.json());
    assert_eq!(login(json!({"token": pat})).await.status, 200);
    // A personal token with an end stops working at that end; an end that is
    // not a time, or already past, is refused.
    for bad in ["tomorrow", "2020-01-01T00:00:00Z"] {
        let r = server
            .post_json(
                "/api/admin/user/tokens",
                &ed,
                &json!({"description": "bad", "expiresAt": bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", text(&r));
        assert!(text(&r).contains("expiresAt"), "{}", text(&r));
    }
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let soon = chrono::DateTime::from_timestamp(soon as i64, 0)
        .unwrap()
        .to_rfc3339();
    let r = server
        .post_json(
            "/api/admin/user/tokens",
            &ed,
            &json!({"description": "short", "expiresAt": soon}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert!(r.json()["expiresAt"].is_string(), "{}", r.json());
    let short = r.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(server.get("/api/admin/user", &short, &[]).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    assert_eq!(server.get("/api/admin/user", &short, &[]).await.status, 401);
    assert_eq!(login(json!({"token": short})).await.status, 401);
    // A user revokes their own personal token, not someone else's.
    let r = server
        .post_json(
            "/api/admin/user/tokens",
            &ed,
            &json!({"description": "spare"}),
        )
        .await;
    let spare = r.json()["secret"].as_str().unwrap().to_owned();
    let other = user(&server, "ned", "editor").await;
    let path = format!("/api/admin/api-tokens/{spare}");
    assert_eq!(server.delete(&path, &other).await.status, 403);
    assert_eq!(server.delete(&path, &ed).await.status, 200);
    assert_eq!(server.get("/api/admin/user", &spare, &[]).await.status, 401);
    assert_eq!(login(json!({"token": ADMIN})).await.status, 403);
    // Personal tokens do not show in the service token list.
    let r = server.get("/api/admin/api-tokens", ADMIN, &[]).await;
    assert_eq!(
        r.json()["tokens"].as_array().unwrap().len(),
        1,
        "{}",
        r.json()
    );

    // Logging out ends the session at once.
    let r = server
        .request("POST", "/api/admin/logout", &[("Authorization", &ed)], None)
        .await;
    assert_eq!(r.status, 204, "{}", text(&r));
    assert_eq!(server.get("/api/admin/user", &ed, &[]).await.status, 401);
    // Role changes take effect at once; deleting a user revokes their tokens.
    let r = put(
        &server,
        "/api/admin/user-admin/ed",
        ADMIN,
        &json!({"role": "admin"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        server.get("/api/admin/user", &pat, &[]).await.json()["role"],
        "admin"
    );
    assert_eq!(
        server
            .delete("/api/admin/user-admin/ed", ADMIN)
            .await
            .status,
        200
    );
    assert_eq!(server.get("/api/admin/user", &pat, &[]).await.status, 401);
    // Bad input.
    for body in [
        json!({"username": "x y", "role": "viewer"}),
        json!({"username": "z", "role": "superuser"}),
        json!({"username": "z", "role": "viewer", "password": "short"}),
    ] {
        let r = server
            .post_json("/api/admin/user-admin", ADMIN, &body)
            .await;
        assert_eq!(r.status, 400, "{body}: {}", text(&r));
    }
    chain_verifies(&server).await;
}

#[tokio::test]
async fn bad_change_requests_are_refused_and_store_nothing() {
    let server = common::start().await;
    flag(&server, "f", ADMIN).await;
    let ed = user(&server, "ed", "editor").await;
    let path = format!("{PROJECT}/environments/production/change-requests");
    // Not protected: change it directly.
    let r = server.post_json(&path, &ed, &enable("f")).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    protect(&server, "production", 1).await;
    for (body, status) in [
        (
            json!({"feature": "f", "action": "dropTable", "payload": {}}),
            400,
        ),
        (
            json!({"feature": "f", "action": "updateEnabled", "payload": {"enabled": "yes"}}),
            400,
        ),
        (
            json!({"feature": "nope", "action": "updateEnabled", "payload": {"enabled": true}}),
            404,
        ),
        (
            json!({"feature": "f", "action": "deleteStrategy", "payload": {"id": "missing"}}),
            404,
        ),
        (
            json!({"feature": "f", "action": "addStrategy", "payload": {"name": "flexibleRollout", "parameters": {"rollout": "150"}}}),
            400,
        ),
        (
            json!({"feature": "f", "action": "addStrategy", "payload": {"name": "default", "constraints": [{"contextName": "x", "operator": "NOPE", "values": []}]}}),
            400,
        ),
        (json!([]), 400),
    ] {
        let r = server.post_json(&path, &ed, &body).await;
        assert_eq!(r.status, status, "{body}: {}", text(&r));
    }
    let r = server
        .get(&format!("{PROJECT}/change-requests"), ADMIN, &[])
        .await;
    assert_eq!(
        r.json(),
        json!([]),
        "a refused change left a request behind"
    );
    let r = put(
        &server,
        &format!("{PROJECT}/environments/production/change-requests/config"),
        ADMIN,
        &json!({"changeRequestsEnabled": true, "requiredApprovals": 11}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = server
        .get(&format!("{PROJECT}/change-requests/99"), ADMIN, &[])
        .await;
    assert_eq!(r.status, 404);
    chain_verifies(&server).await;
}

fn events_of(all: &[Value], kind: &str, id: i64) -> Vec<Value> {
    all.iter()
        .filter(|e| e["type"] == kind && e["data"]["changeRequest"] == id)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_scheduled_request_that_cannot_apply_fails_and_the_next_still_applies() {
    let server = common::start().await;
    flag(&server, "strict", ADMIN).await;
    flag(&server, "relaxed", ADMIN).await;
    protect(&server, "production", 1).await;
    protect(&server, "development", 1).await;
    let author = user(&server, "ed", "editor").await;
    let ann = user(&server, "ann", "approver").await;
    // Both due at the same moment, so one tick handles both, the failing one first.
    let due = cordon_flags::metrics::rfc3339(now_ms() + 2500);
    let failing = open_in(&server, "production", &author, enable("strict")).await;
    let fine = open_in(&server, "development", &author, enable("relaxed")).await;
    assert!(failing < fine);
    for id in [failing, fine] {
        assert_eq!(approve(&server, &ann, id).await.status, 200);
        let r = state(
            &server,
            &author,
            id,
            json!({"state": "Scheduled", "scheduledAt": due}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    // Production now needs two approvals: the scheduled request has one.
    protect(&server, "production", 2).await;

    let applied = poll_state(&server, fine, |v| v["state"] == "Applied").await;
    assert_eq!(applied["schedule"]["status"], "applied");
    let dev = server
        .get(
            &format!("{PROJECT}/features/relaxed/environments/development"),
            ADMIN,
            &[],
        )
        .await;
    assert_eq!(dev.json()["enabled"], true);
    let failed = poll_state(&server, failing, |v| v["schedule"]["status"] == "failed").await;
    assert_eq!(failed["state"], "Scheduled");
    let reason = failed["schedule"]["reason"].as_str().unwrap();
    assert!(reason.contains("requires 2"), "{reason}");
    assert!(!enabled_in_production(&server, "strict").await);
    let all = events(&server).await;
    let audited = events_of(&all, "change-request-schedule-failed", failing);
    assert_eq!(audited.len(), 1, "{all:?}");
    assert_eq!(audited[0]["data"]["reason"], reason);
    assert_eq!(audited[0]["createdBy"], "system:scheduler");
    assert!(events_of(&all, "change-request-applied", failing).is_empty());
    // It is not retried: resubmitting it is the way on.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let all = events(&server).await;
    assert_eq!(
        events_of(&all, "change-request-schedule-failed", failing).len(),
        1
    );
    let r = state(&server, &author, failing, json!({"state": "In review"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["schedule"], Value::Null);
    chain_verifies(&server).await;
}

#[tokio::test]
async fn approvals_are_counted_again_when_applying() {
    let server = common::start().await;
    flag(&server, "checkout", ADMIN).await;
    protect(&server, "production", 1).await;
    let author = user(&server, "ed", "editor").await;
    let ann = user(&server, "ann", "approver").await;
    let otto = user(&server, "otto", "approver").await;
    let id = open(&server, &author, enable("checkout")).await;
    assert_eq!(approve(&server, &ann, id).await.json()["state"], "Approved");
    protect(&server, "production", 2).await;

    let later = cordon_flags::metrics::rfc3339(now_ms() + 3_600_000);
    for body in [
        json!({"state": "Applied"}),
        json!({"state": "Scheduled", "scheduledAt": later}),
    ] {
        let r = state(&server, &author, id, body.clone()).await;
        assert_eq!(r.status, 409, "{body}: {}", text(&r));
        assert!(
            text(&r).contains("has 1 approval, but") && text(&r).contains("now requires 2"),
            "{}",
            text(&r)
        );
    }
    assert!(!enabled_in_production(&server, "checkout").await);
    // The same approver counts once; a second one makes it applicable.
    assert_eq!(approve(&server, &ann, id).await.status, 409);
    let r = approve(&server, &otto, id).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["approvals"].as_array().unwrap().len(), 2);
    let r = state(&server, &author, id, json!({"state": "Applied"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(enabled_in_production(&server, "checkout").await);
    chain_verifies(&server).await;
}

#[tokio::test]
async fn approvers_reject_authors_and_admins_cancel_and_people_comment() {
    let server = common::start().await;
    for f in ["a", "b", "c"] {
        flag(&server, f, ADMIN).await;
    }
    protect(&server, "production", 1).await;
    let ed = user(&server, "ed", "editor").await;
    let ned = user(&server, "ned", "editor").await;
    let ann = user(&server, "ann", "approver").await;
    let ada = user(&server, "ada", "admin").await;
    let vic = user(&server, "vic", "viewer").await;

    // An approver rejects someone else's request.
    let rejected = open(&server, &ed, enable("a")).await;
    let r = state(
        &server,
        &ann,
        rejected,
        json!({"state": "Rejected", "comment": "not this week"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "Rejected");
    assert_eq!(r.json()["rejections"][0]["comment"], "not this week");
    assert_eq!(
        approve(&server, &ann, rejected).await.status,
        409,
        "a rejected request is closed"
    );

    // An author cannot reject their own request; they cancel it.
    let own = open(&server, &ann, enable("b")).await;
    let r = state(&server, &ann, own, json!({"state": "Rejected"})).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(text(&r).contains("cancel it instead"), "{}", text(&r));
    let r = state(&server, &ann, own, json!({"state": "Cancelled"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "Cancelled");

    // Comments: anyone but a viewer, shown on the request and audited.
    let other = open(&server, &ed, enable("c")).await;
    let comments = format!("{PROJECT}/change-requests/{other}/comments");
    let r = server
        .post_json(&comments, &ann, &json!({"text": "why now?"}))
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.json()["comments"][0]["text"], "why now?");
    assert_eq!(r.json()["comments"][0]["createdBy"]["username"], "user:ann");
    let r = server
        .post_json(&comments, &vic, &json!({"text": "me too"}))
        .await;
    assert_eq!(r.status, 403, "{}", text(&r));
    let r = server
        .get(&format!("{PROJECT}/change-requests/{other}"), ADMIN, &[])
        .await;
    assert_eq!(r.json()["comments"].as_array().unwrap().len(), 1);

    // Another editor cannot cancel someone else's request; an admin can.
    let r = state(&server, &ned, other, json!({"state": "Cancelled"})).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(text(&r).contains("only the author"), "{}", text(&r));
    let r = state(&server, &ada, other, json!({"state": "Cancelled"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "Cancelled");
    for f in ["a", "b", "c"] {
        assert!(!enabled_in_production(&server, f).await);
    }

    let all = events(&server).await;
    let rejection = events_of(&all, "change-request-rejected", rejected);
    assert_eq!(rejection.len(), 1, "{all:?}");
    assert_eq!(rejection[0]["createdBy"], "user:ann");
    assert_eq!(rejection[0]["data"]["comment"], "not this week");
    assert!(events_of(&all, "change-request-rejected", own).is_empty());
    assert_eq!(events_of(&all, "change-request-cancelled", own).len(), 1);
    let cancelled = events_of(&all, "change-request-cancelled", other);
    assert_eq!(cancelled.len(), 1, "{all:?}");
    assert_eq!(cancelled[0]["createdBy"], "user:ada");
    let commented = events_of(&all, "change-request-comment-added", other);
    assert_eq!(commented.len(), 1, "{all:?}");
    assert_eq!(commented[0]["data"]["comment"], "why now?");
    chain_verifies(&server).await;
}

#[tokio::test]
async fn dependencies_are_checked_when_submitted_and_suspend_a_schedule_when_the_parent_goes() {
    let server = common::start().await;
    for f in ["parent", "child", "other", "gone"] {
        flag(&server, f, ADMIN).await;
    }
    assert_eq!(
        server
            .delete(&format!("{PROJECT}/features/gone"), ADMIN)
            .await
            .status,
        202
    );
    protect(&server, "production", 1).await;
    let author = user(&server, "ed", "editor").await;
    let ann = user(&server, "ann", "approver").await;
    let depend = |child: &str, parent: &str| json!({"feature": child, "action": "addDependency", "payload": {"feature": parent}});
    let path = format!("{PROJECT}/environments/production/change-requests");
    for (body, why) in [
        (depend("child", "nope"), "live flag"),
        (depend("child", "gone"), "live flag"),
        (depend("child", "child"), "itself"),
        // The second change nests under the first, in the same request.
        (
            json!([depend("child", "parent"), depend("parent", "other")]),
            "one level deep",
        ),
    ] {
        let r = server.post_json(&path, &author, &body).await;
        assert_eq!(r.status, 400, "{body}: {}", text(&r));
        assert!(text(&r).contains(why), "{body}: {}", text(&r));
    }
    let r = server
        .get(&format!("{PROJECT}/change-requests"), ADMIN, &[])
        .await;
    assert_eq!(
        r.json(),
        json!([]),
        "a refused change left a request behind"
    );

    let later = cordon_flags::metrics::rfc3339(now_ms() + 3_600_000);
    let dependency = open(&server, &author, depend("child", "parent")).await;
    assert_eq!(approve(&server, &ann, dependency).await.status, 200);
    let r = state(
        &server,
        &author,
        dependency,
        json!({"state": "Scheduled", "scheduledAt": later}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    // The parent is archived (through a request of its own) before it is due.
    let archive = open(
        &server,
        &author,
        json!({"feature": "parent", "action": "archiveFeature", "payload": {}}),
    )
    .await;
    assert_eq!(approve(&server, &ann, archive).await.status, 200);
    let r = state(&server, &author, archive, json!({"state": "Applied"})).await;
    assert_eq!(r.status, 200, "{}", text(&r));

    let suspended = poll_state(&server, dependency, |v| {
        v["schedule"]["status"] == "suspended"
    })
    .await;
    let reason = suspended["schedule"]["reason"].as_str().unwrap();
    assert!(reason.contains("\"parent\""), "{reason}");
    let all = events(&server).await;
    assert!(
        !all.iter().any(|e| e["type"] == "feature-dependency-added"),
        "{all:?}"
    );
    assert_eq!(
        events_of(&all, "change-request-schedule-suspended", dependency).len(),
        1
    );
    chain_verifies(&server).await;
}
