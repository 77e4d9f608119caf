//! Authentication, scoping, caching and bad-input behaviour of the HTTP APIs.

mod common;

use common::ADMIN;
use serde_json::json;

fn state(flag: &str, enabled: bool) -> serde_json::Value {
    json!({
        "version": 2,
        "features": [{
            "name": flag,
            "enabled": enabled,
            "strategies": [{"name": "default", "parameters": {}, "segments": [7]}]
        }],
        "segments": [{"id": 7, "constraints": [
            {"contextName": "userId", "operator": "IN", "values": ["alice"]}
        ]}]
    })
}

fn names(r: &common::Response) -> Vec<String> {
    r.json()["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn bad_tokens_get_401_and_wrong_types_403() {
    let s = common::start().await;
    let r = s.request("GET", "/api/client/features", &[], None).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("Authorization")
    );
    for bad in [
        "*:*.test-admin-secret-012345678",
        "nonsense",
        "default:development.x",
        &"a".repeat(10_000),
    ] {
        let r = s.get("/api/client/features", bad, &[]).await;
        assert_eq!(r.status, 401, "{bad:.40}");
        assert_eq!(r.json()["error"], "invalid API token");
    }
    let frontend = s.create_token("frontend", "*", "development").await;
    assert_eq!(
        s.get("/api/client/features", &frontend, &[]).await.status,
        403
    );
    let client = s.create_token("client", "*", "development").await;
    let r = s.post_json("/api/frontend", &client, &json!({})).await;
    assert_eq!(r.status, 403);
    assert_eq!(s.import("development", &state("x", true)).await.status, 202);
    let r = s
        .post_json(
            "/api/admin/state/import?environment=development",
            &client,
            &state("x", true),
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_client_token_sees_only_its_environment_and_project() {
    let s = common::start().await;
    assert_eq!(
        s.import("development", &state("dev-only", true))
            .await
            .status,
        202
    );
    let mut prod = state("prod-only", true);
    prod["features"][0]["project"] = json!("payments");
    assert_eq!(s.import("production", &prod).await.status, 202);

    let dev = s.create_token("client", "*", "development").await;
    let prod_token = s.create_token("client", "*", "production").await;
    let other_project = s.create_token("client", "default", "production").await;
    assert_eq!(
        names(&s.get("/api/client/features", &dev, &[]).await),
        ["dev-only"]
    );
    assert_eq!(
        names(&s.get("/api/client/features", &prod_token, &[]).await),
        ["prod-only"]
    );
    assert!(names(&s.get("/api/client/features", &other_project, &[]).await).is_empty());
    assert_eq!(
        s.get("/api/client/features/prod-only", &dev, &[])
            .await
            .status,
        404
    );
    let r = s.get("/api/client/features/dev-only", &dev, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "dev-only");

    // A token text naming another environment is still only what it was issued for.
    let forged = prod_token.replacen("production", "development", 1);
    assert_eq!(
        s.get("/api/client/features", &forged, &[]).await.status,
        401
    );
}

#[tokio::test]
async fn etag_gives_304_until_the_state_changes() {
    let s = common::start().await;
    assert_eq!(s.import("development", &state("f", true)).await.status, 202);
    let client = s.create_token("client", "*", "development").await;
    let first = s.get("/api/client/features", &client, &[]).await;
    let etag = first.header("etag").expect("ETag header").to_owned();
    let again = s
        .get("/api/client/features", &client, &[("If-None-Match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    assert_eq!(
        s.import("development", &state("f", false)).await.status,
        202
    );
    let changed = s
        .get("/api/client/features", &client, &[("If-None-Match", &etag)])
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["features"][0]["enabled"], false);
    assert_ne!(changed.header("etag").unwrap(), etag);
}

#[tokio::test]
async fn segments_are_inlined_for_clients_older_than_spec_4_2() {
    let s = common::start().await;
    assert_eq!(s.import("development", &state("f", true)).await.status, 202);
    let client = s.create_token("client", "*", "development").await;
    for old in [None, Some("4.1.9"), Some("3.3.0")] {
        let headers: Vec<(&str, &str)> = old
            .map(|v| ("Unleash-Client-Spec", v))
            .into_iter()
            .collect();
        let r = s
            .get("/api/client/features", &client, &headers)
            .await
            .json();
        assert!(r.get("segments").is_none(), "{old:?}");
        let strategy = &r["features"][0]["strategies"][0];
        assert!(strategy.get("segments").is_none());
        assert_eq!(strategy["constraints"][0]["values"][0], "alice");
    }
    let r = s
        .get(
            "/api/client/features",
            &client,
            &[("Unleash-Client-Spec", "4.2.0")],
        )
        .await
        .json();
    assert_eq!(r["segments"][0]["id"], 7);
    assert_eq!(r["features"][0]["strategies"][0]["segments"][0], 7);
    assert!(
        r["features"][0]["strategies"][0]["constraints"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn frontend_get_and_post_evaluate_the_context() {
    let s = common::start().await;
    assert_eq!(s.import("development", &state("f", true)).await.status, 202);
    let token = s.create_token("frontend", "*", "development").await;
    let on = s
        .get("/api/frontend?userId=alice", &token, &[])
        .await
        .json();
    assert_eq!(on["toggles"][0]["name"], "f");
    assert_eq!(on["toggles"][0]["variant"]["name"], "disabled");
    let off = s.get("/api/frontend?userId=bob", &token, &[]).await.json();
    assert_eq!(off["toggles"], json!([]));
    let on = s
        .post_json(
            "/api/frontend",
            &token,
            &json!({"context": {"userId": "alice"}}),
        )
        .await;
    assert_eq!(on.json()["toggles"][0]["enabled"], true);
}

#[tokio::test]
async fn bad_input_gets_a_precise_4xx() {
    let s = common::start().await;
    let r = s
        .request(
            "POST",
            "/api/admin/state/import?environment=development",
            &[("Authorization", ADMIN)],
            Some(b"{\"version\": 2, \"features\": ["),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("not valid"),
        "{:?}",
        r.json()
    );

    let mut typo = state("f", true);
    typo["features"][0]["strategy"] = typo["features"][0]["strategies"].take();
    typo["features"][0]
        .as_object_mut()
        .unwrap()
        .remove("strategies");
    let r = s.import("development", &typo).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("$.features[0].strategy"),
        "{:?}",
        r.json()
    );

    let r = s.import("staging", &state("f", true)).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("staging"));
    let r = s.get("/api/admin/state/export", ADMIN, &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("environment"));

    let r = s.post_json("/api/admin/api-tokens", ADMIN, &json!({"tokenName": "t", "type": "client", "environment": "development", "colour": "red"})).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("colour"));
    let r = s
        .post_json(
            "/api/admin/api-tokens",
            ADMIN,
            &json!({"tokenName": "t", "type": "client"}),
        )
        .await;
    assert_eq!(r.status, 400);

    let frontend = s.create_token("frontend", "*", "development").await;
    let r = s
        .request(
            "POST",
            "/api/frontend",
            &[("Authorization", &frontend)],
            Some(b"[1,2"),
        )
        .await;
    assert_eq!(r.status, 400);
    let big = format!("{{\"userId\": \"{}\"}}", "x".repeat(100 * 1024));
    let r = s
        .request(
            "POST",
            "/api/frontend",
            &[("Authorization", &frontend)],
            Some(big.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
    assert_eq!(s.get("/api/nope", ADMIN, &[]).await.status, 404);
}

#[tokio::test]
async fn export_returns_what_was_imported() {
    let s = common::start().await;
    let mut st = state("f", true);
    st["features"][0]["strategies"][0]["constraints"] =
        json!([{"contextName": "x", "operator": "SOME_FUTURE_OPERATOR", "values": ["1"]}]);
    assert_eq!(s.import("production", &st).await.status, 202);
    let out = s
        .get("/api/admin/state/export?environment=production", ADMIN, &[])
        .await
        .json();
    assert_eq!(out["features"][0]["name"], "f");
    assert_eq!(
        out["features"][0]["strategies"][0]["constraints"][0]["operator"],
        "SOME_FUTURE_OPERATOR"
    );
    assert_eq!(out["segments"][0]["id"], 7);
    // The export imports again unchanged.
    assert_eq!(s.import("development", &out).await.status, 202);
    let dev = s
        .get(
            "/api/admin/state/export?environment=development",
            ADMIN,
            &[],
        )
        .await
        .json();
    assert_eq!(dev, out);
}

#[tokio::test]
async fn changes_through_the_api_are_audited_and_verify() {
    let server = common::start().await;
    assert_eq!(
        server.import("production", &state("a", true)).await.status,
        202
    );
    server.create_token("client", "*", "production").await;
    let r = server.get("/api/admin/audit/verify", ADMIN, &[]).await;
    assert_eq!(r.status, 200);
    let report = r.json();
    // The bootstrap admin token, the import, the client token.
    assert_eq!(report["events"], 3, "{report}");
    assert_eq!(report["problems"], json!([]));
    assert!(report["head"].as_str().is_some_and(|h| h.len() == 64));
    let client = server.create_token("client", "*", "production").await;
    assert_eq!(
        server
            .get("/api/admin/audit/verify", &client, &[])
            .await
            .status,
        403
    );
}

/// The `enabled` of `flag` in the client API of `token`, `None` when it is absent.
async fn client_sees(server: &common::Server, token: &str, flag: &str) -> Option<bool> {
    let r = server.get("/api/client/features", token, &[]).await;
    assert_eq!(r.status, 200);
    r.json()["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == flag)
        .map(|f| f["enabled"].as_bool().unwrap())
}

#[tokio::test]
async fn admin_feature_lifecycle_at_unleash_paths() {
    let server = common::start().await;
    let client = server.create_token("client", "*", "production").await;
    let base = "/api/admin/projects/default/features";
    let r = server
        .post_json(
            base,
            ADMIN,
            &json!({"name": "agent-change", "description": "by an agent"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], "agent-change");
    assert!(
        r.json()["environments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["enabled"] == false),
        "a new flag starts disabled everywhere: {}",
        r.json()
    );
    // Created dark; the cached client state was dropped, so it shows at once.
    assert_eq!(
        client_sees(&server, &client, "agent-change").await,
        Some(false)
    );

    let on = format!("{base}/agent-change/environments/production/on");
    let off = format!("{base}/agent-change/environments/production/off");
    assert_eq!(server.post_json(&on, ADMIN, &json!({})).await.status, 200);
    assert_eq!(
        client_sees(&server, &client, "agent-change").await,
        Some(true)
    );
    assert_eq!(server.post_json(&off, ADMIN, &json!({})).await.status, 200);
    assert_eq!(
        client_sees(&server, &client, "agent-change").await,
        Some(false)
    );

    let one = server
        .get(&format!("{base}/agent-change"), ADMIN, &[])
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["description"], "by an agent");
    let list = server.get(base, ADMIN, &[]).await.json();
    assert_eq!(list["features"][0]["name"], "agent-change");

    let del = server
        .request(
            "DELETE",
            &format!("{base}/agent-change"),
            &[("Authorization", ADMIN)],
            None,
        )
        .await;
    assert_eq!(del.status, 202);
    assert_eq!(client_sees(&server, &client, "agent-change").await, None);
    assert_eq!(
        server.get(base, ADMIN, &[]).await.json()["features"],
        json!([])
    );
    assert_eq!(server.post_json(&on, ADMIN, &json!({})).await.status, 404);

    let report = server
        .get("/api/admin/audit/verify", ADMIN, &[])
        .await
        .json();
    // Bootstrap token, client token, create, on, off, archive.
    assert_eq!(report["events"], 6, "{report}");
    assert_eq!(report["problems"], json!([]));
}

#[tokio::test]
async fn admin_feature_errors_are_precise_json() {
    let server = common::start().await;
    let base = "/api/admin/projects/default/features";
    let cases: &[(&str, &str, serde_json::Value, u16)] = &[
        ("POST", base, json!({"name": "has space"}), 400),
        ("POST", base, json!({"name": "x", "strategiez": []}), 400),
        ("POST", base, json!({"nam": "x"}), 400),
        (
            "POST",
            "/api/admin/projects/nowhere/features",
            json!({"name": "x"}),
            404,
        ),
        (
            "POST",
            &format!("{base}/missing/environments/production/off"),
            json!({}),
            404,
        ),
        (
            "POST",
            &format!("{base}/missing/environments/production/sideways"),
            json!({}),
            404,
        ),
    ];
    for (method, path, body, status) in cases {
        let b = serde_json::to_vec(body).unwrap();
        let r = server
            .request(method, path, &[("Authorization", ADMIN)], Some(&b))
            .await;
        assert_eq!(r.status, *status, "{method} {path} {body}");
        assert!(r.json()["error"].is_string(), "{method} {path}");
    }
    let r = server
        .request(
            "POST",
            base,
            &[("Authorization", ADMIN)],
            Some(b"{not json"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        server
            .post_json(base, ADMIN, &json!({"name": "x"}))
            .await
            .status,
        201
    );
    let again = server.post_json(base, ADMIN, &json!({"name": "x"})).await;
    assert_eq!(again.status, 409);
    assert!(again.json()["error"].is_string());
    let env = server
        .post_json(
            &format!("{base}/x/environments/staging/on"),
            ADMIN,
            &json!({}),
        )
        .await;
    assert_eq!(env.status, 400);
    let client = server.create_token("client", "*", "production").await;
    assert_eq!(server.get(base, &client, &[]).await.status, 403);
    // Only the bootstrap token, the flag and the client token: failures write nothing.
    let report = server
        .get("/api/admin/audit/verify", ADMIN, &[])
        .await
        .json();
    assert_eq!(report["events"], 3, "{report}");
}

#[tokio::test]
async fn the_blocking_admin_client_kills_a_flag() {
    let server = common::start().await;
    let url = format!("http://{}", server.addr);
    let client_token = server.create_token("client", "*", "production").await;
    let base = "/api/admin/projects/default/features";
    let admin = cordon_flags::client::AdminClient::new(&url, ADMIN).unwrap();
    let created = tokio::task::spawn_blocking(move || {
        admin
            .send("POST", base, Some(&json!({"name": "k"})))
            .unwrap();
        admin
            .send(
                "POST",
                &format!("{base}/k/environments/production/on"),
                None,
            )
            .unwrap();
        admin
    })
    .await
    .unwrap();
    assert_eq!(client_sees(&server, &client_token, "k").await, Some(true));
    let refused = tokio::task::spawn_blocking(move || {
        created
            .send(
                "POST",
                &format!("{base}/k/environments/production/off"),
                None,
            )
            .unwrap();
        created.send("POST", base, Some(&json!({"name": "bad name"})))
    })
    .await
    .unwrap();
    assert_eq!(client_sees(&server, &client_token, "k").await, Some(false));
    match refused {
        Err(cordon_flags::client::ClientError::Refused {
            status: 400,
            message,
            ..
        }) => {
            assert!(message.contains("URL-friendly"), "{message}")
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    // https is accepted; other schemes, paths and empty hosts are not.
    assert!(cordon_flags::client::AdminClient::new("https://flags.example", ADMIN).is_ok());
    for bad in ["ftp://x", "127.0.0.1:4242", "http://x/api", "http://"] {
        assert!(
            cordon_flags::client::AdminClient::new(bad, ADMIN).is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_state_as_unleash_serves_it_imports() {
    let server = common::start().await;
    // Unleash's client API names segments and gives strategy variants a weightType;
    // neither changes evaluation, and a state copied from Unleash must import.
    let state = json!({"version": 2, "features": [{
        "name": "f", "enabled": true,
        "strategies": [{"name": "default", "parameters": {}, "segments": [1],
            "variants": [{"name": "a", "weight": 1000, "weightType": "variable", "stickiness": "default"}]}]
    }], "segments": [{"id": 1, "name": "beta", "constraints": []}]});
    let r = server.import("production", &state).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    // Anything else unknown is still refused with its path, including a `name` that
    // is not a segment's.
    let state = json!({"version": 2, "features": [], "segments": [{"id": 1, "constraints": [
        {"contextName": "x", "operator": "IN", "values": ["1"], "name": "oops"}]}]});
    let r = server.import("production", &state).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("$.segments[0].constraints[0].name"),
        "{}",
        r.json()
    );
}

/// Send `POST path` with a chunked body of 64 MiB, writing while the answer has not
/// come; returns the status and how many body bytes had been written when it came.
async fn upload_until_answered(server: &common::Server, path: &str, token: &str) -> (u16, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: usize = 64 << 20;
    const CHUNK: usize = 64 << 10;
    let stream = common::connect_from_client_address(server.addr).await;
    let (mut rx, mut tx) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    );
    tx.write_all(head.as_bytes()).await.unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b' ', CHUNK));
        chunk.extend_from_slice(b"\r\n");
        while counter.load(std::sync::atomic::Ordering::SeqCst) < TOTAL {
            // The server may close its end once it has answered.
            if tx.write_all(&chunk).await.is_err() {
                return;
            }
            counter.fetch_add(CHUNK, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = tx.write_all(b"0\r\n\r\n").await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let n = rx.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed without answering");
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                let line = String::from_utf8_lossy(&answer);
                return line.split(' ').nth(1).unwrap().parse::<u16>().unwrap();
            }
        }
    })
    .await
    .expect("no answer within 60 s");
    let sent = written.load(std::sync::atomic::Ordering::SeqCst);
    writer.abort();
    (status, sent)
}

/// A console session of a user who may read, and not import.
async fn viewer_session(server: &common::Server) -> String {
    let password = "viewer-long-password";
    let r = server
        .post_json(
            "/api/admin/user-admin",
            ADMIN,
            &json!({"username": "vera", "role": "viewer", "password": password}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let login = serde_json::to_vec(&json!({"username": "vera", "password": password})).unwrap();
    let r = server
        .request("POST", "/api/admin/login", &[], Some(&login))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_bad_token_is_refused_before_the_body_is_read() {
    let s = common::start().await;
    let client = s.create_token("client", "*", "development").await;
    let viewer = viewer_session(&s).await;
    let import = "/api/admin/state/import?environment=development";
    // The import accepts 32 MiB, and a server that reads the body before the token
    // takes all of it before answering. Refused first, the body stalls once the socket
    // buffers are full (about 4 MiB on loopback), none of it read by the server.
    for (path, token, status) in [
        (import, "nonsense", 401),
        (import, "*:*.test-admin-secret-012345678", 401),
        (import, client.as_str(), 403),
        (import, viewer.as_str(), 403),
        ("/api/admin/projects/default/features", "nonsense", 401),
        ("/api/admin/user-admin", "nonsense", 401),
        ("/api/client/metrics", "nonsense", 401),
        ("/api/frontend", client.as_str(), 403),
    ] {
        let (got, sent) = upload_until_answered(&s, path, token).await;
        assert_eq!(got, status, "{path} with {token:.20}");
        assert!(
            sent < 16 << 20,
            "{path} with {token:.20}: {sent} bytes of the body were taken before the answer"
        );
    }
}

#[tokio::test]
async fn a_flag_type_is_one_of_unleashs() {
    let s = common::start().await;
    let base = "/api/admin/projects/default/features";
    for bogus in ["bogus", "", "Release"] {
        let r = s
            .post_json(base, ADMIN, &json!({"name": "f", "type": bogus}))
            .await;
        assert_eq!(
            r.status,
            400,
            "{bogus:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            msg.contains(&format!("unknown flag type {bogus:?}")) && msg.contains("kill-switch"),
            "{msg}"
        );
    }
    assert_eq!(s.get(&format!("{base}/f"), ADMIN, &[]).await.status, 404);
    for t in [
        "release",
        "experiment",
        "operational",
        "kill-switch",
        "permission",
    ] {
        let r = s
            .post_json(base, ADMIN, &json!({"name": t, "type": t}))
            .await;
        assert_eq!(r.status, 201, "{t}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            s.get(&format!("{base}/{t}"), ADMIN, &[]).await.json()["type"],
            t
        );
    }
    let r = s.post_json(base, ADMIN, &json!({"name": "plain"})).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        s.get(&format!("{base}/plain"), ADMIN, &[]).await.json()["type"],
        "release"
    );
    // Changing the type is held to the same list.
    let put = |body: serde_json::Value| {
        let b = serde_json::to_vec(&body).unwrap();
        let s = &s;
        async move {
            s.request(
                "PUT",
                &format!("{base}/plain"),
                &[("Authorization", ADMIN)],
                Some(&b),
            )
            .await
        }
    };
    let r = put(json!({"type": "bogus"})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown flag type")
    );
    assert_eq!(put(json!({"type": "kill-switch"})).await.status, 200);
    assert_eq!(
        s.get(&format!("{base}/plain"), ADMIN, &[]).await.json()["type"],
        "kill-switch"
    );
}

/// Errors axum answers before a handler runs are JSON like every other error: a method
/// the path does not have (`405`, was an empty body; the `Allow` header stays), a path
/// parameter that is not UTF-8 or not a number (`400`, was plain text), no such path.
#[tokio::test]
async fn errors_from_routing_and_extraction_are_json_too() {
    let server = common::start().await;
    let base = "/api/admin/projects/default/features";
    assert_eq!(
        server
            .post_json(base, ADMIN, &json!({"name": "x"}))
            .await
            .status,
        201
    );
    let client = server.create_token("client", "*", "production").await;
    let cases: &[(&str, String, &str, u16, &str)] = &[
        ("PATCH", format!("{base}/x"), ADMIN, 405, "PATCH"),
        (
            "DELETE",
            "/api/client/features".into(),
            &client,
            405,
            "DELETE",
        ),
        (
            "PUT",
            "/api/admin/state/export?environment=production".into(),
            ADMIN,
            405,
            "PUT",
        ),
        ("GET", format!("{base}/%FF%FE"), ADMIN, 400, "UTF-8"),
        (
            "GET",
            "/api/client/features/%C3%28".into(),
            &client,
            400,
            "UTF-8",
        ),
        (
            "PUT",
            "/api/admin/segments/not-a-number".into(),
            ADMIN,
            400,
            "not-a-number",
        ),
        (
            "GET",
            "/api/admin/nothing-here".into(),
            ADMIN,
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, token, status, says) in cases {
        let r = server
            .request(method, path, &[("Authorization", token)], Some(b"{}"))
            .await;
        assert_eq!(r.status, *status, "{method} {path}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains(says),
            "{method} {path}: {error} {:?}",
            r.headers
        );
        if *status == 405 {
            let allow = r.header("allow").unwrap_or_default().to_owned();
            assert!(!allow.is_empty(), "{method} {path}: no Allow header");
            assert!(error.contains(&allow), "{method} {path}: {error} / {allow}");
        }
    }
    // Answers that are not errors are left as they were.
    let r = server.get("/health", "", &[]).await;
    assert_eq!(r.json()["health"], "GOOD");
    let r = server.get(&format!("{base}/x"), ADMIN, &[]).await;
    assert_eq!(r.status, 200);
}
