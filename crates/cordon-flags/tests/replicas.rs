//! Two servers on one PostgreSQL database, as two replicas behind a load balancer:
//! what one replica is told, the other's clients see — streams, polls and tokens —
//! and writes through both at once keep one audit chain.
//!
//! Needs a PostgreSQL server: `CORDON_TEST_POSTGRES_URL`. Without it these tests fail
//! (they do not skip); `scripts/test` starts one and sets the variable.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::TestDatabase;
use common::sse::{self, SseStream};
use common::{ADMIN, Server};
use cordon_flags::ServeOptions;
use serde_json::json;

const FEATURES: &str = "/api/admin/projects/default/features";
/// How long a change may take to reach the other replica before the test fails.
/// Typical is a few milliseconds; the bound only catches "never" and regressions to
/// polling.
const BOUND: Duration = Duration::from_secs(5);

async fn replicas() -> (Arc<TestDatabase>, Server, Server) {
    let db = Arc::new(TestDatabase::create());
    let a = common::start_on(db.clone(), ServeOptions::default()).await;
    let b = common::start_on(db.clone(), ServeOptions::default()).await;
    (db, a, b)
}

async fn create(server: &Server, name: &str) -> u16 {
    server
        .post_json(FEATURES, ADMIN, &json!({ "name": name }))
        .await
        .status
}

async fn switch(server: &Server, name: &str, on: bool) {
    let path = format!(
        "{FEATURES}/{name}/environments/production/{}",
        if on { "on" } else { "off" }
    );
    let r = server.post_json(&path, ADMIN, &json!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

async fn stream(server: &Server, token: &str) -> SseStream {
    let s = sse::open(
        server.addr,
        "/api/client/streaming",
        &[("authorization", token), ("unleash-client-spec", "5.2.0")],
    )
    .await;
    assert_eq!(s.status, 200);
    s
}

/// Read `s` until an event about `flag` arrives; its `(type, enabled)`.
async fn next_about(s: &mut SseStream, flag: &str) -> (String, Option<bool>) {
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = s
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no event about {flag} within {BOUND:?}"));
        for e in ev.json()["events"].as_array().unwrap() {
            let name = e["feature"]["name"].as_str().or(e["featureName"].as_str());
            if name == Some(flag) {
                return (
                    e["type"].as_str().unwrap().to_owned(),
                    e["feature"]["enabled"].as_bool(),
                );
            }
        }
    }
}

/// Poll `server` with `token` until it accepts it; how long that took.
async fn accepted_within_bound(server: &Server, token: &str) -> Duration {
    let t = Instant::now();
    loop {
        let status = server.get("/api/client/features", token, &[]).await.status;
        if status == 200 {
            return t.elapsed();
        }
        assert_eq!(status, 401, "unexpected answer to a new token");
        assert!(
            t.elapsed() < BOUND,
            "a token created on replica A was still refused by replica B after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn flag_enabled(server_answer: &serde_json::Value, flag: &str) -> Option<bool> {
    server_answer["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == flag)
        .map(|f| f["enabled"].as_bool().unwrap())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test]
async fn a_kill_through_one_replica_reaches_the_others_streams_and_polls() {
    let (_db, a, b) = replicas().await;
    let client = a.create_token("client", "*", "production").await;
    accepted_within_bound(&b, &client).await;
    let mut on_a = stream(&a, &client).await;
    let mut on_b = stream(&b, &client).await;
    assert_eq!(on_a.next(BOUND).await.unwrap().event, "unleash-connected");
    assert_eq!(on_b.next(BOUND).await.unwrap().event, "unleash-connected");

    assert_eq!(create(&a, "checkout").await, 201);
    assert_eq!(
        next_about(&mut on_b, "checkout").await,
        ("feature-updated".into(), Some(false))
    );
    next_about(&mut on_a, "checkout").await;

    // Each round: on (or off) through A, then time until A's own stream and B's
    // stream carry it. A pushes before it answers; B hears through PostgreSQL.
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let on = round % 2 == 0;
        let t = Instant::now();
        switch(&a, "checkout", on).await;
        assert_eq!(next_about(&mut on_a, "checkout").await.1, Some(on));
        same.push(t.elapsed());
        assert_eq!(
            next_about(&mut on_b, "checkout").await,
            ("feature-updated".into(), Some(on))
        );
        other.push(t.elapsed());
        // B dropped its snapshot when it heard: a poll sees the change too.
        let polled = b.get("/api/client/features", &client, &[]).await;
        assert_eq!(flag_enabled(&polled.json(), "checkout"), Some(on));
    }
    same.sort();
    other.sort();
    eprintln!(
        "switch through A, seen on a stream of A / of B, ms: median {:.1} / {:.1}, max {:.1} / {:.1}, ratio of medians {:.2}",
        millis(same[same.len() / 2]),
        millis(other[other.len() / 2]),
        millis(same[same.len() - 1]),
        millis(other[other.len() - 1]),
        millis(other[other.len() / 2]) / millis(same[same.len() / 2]).max(0.001),
    );

    // Archived through A: gone from B's stream.
    let r = a.delete(&format!("{FEATURES}/checkout"), ADMIN).await;
    assert_eq!(r.status, 202);
    assert_eq!(
        next_about(&mut on_b, "checkout").await,
        ("feature-removed".into(), None)
    );
}

#[tokio::test]
async fn a_token_created_on_one_replica_works_on_the_other() {
    let (_db, a, b) = replicas().await;
    let client = a.create_token("client", "*", "development").await;
    let took = accepted_within_bound(&b, &client).await;
    eprintln!(
        "a client token created on A was accepted by B after {:.1} ms",
        millis(took)
    );
    // An admin token made on B works on A, for admin work.
    let r = b
        .post_json(
            "/api/admin/api-tokens",
            ADMIN,
            &json!({"tokenName": "ops", "type": "admin"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let ops = r.json()["secret"].as_str().unwrap().to_owned();
    let t = Instant::now();
    loop {
        let r = a
            .post_json(FEATURES, &ops, &json!({"name": "by-ops"}))
            .await;
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        assert!(t.elapsed() < BOUND, "B's admin token never worked on A");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // And the audit log, shared, names who did it.
    let report = b.get("/api/admin/audit/verify", ADMIN, &[]).await.json();
    assert_eq!(report["problems"], json!([]));
    assert_eq!(report["events"], 4, "admin bootstrap, two tokens, one flag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_both_replicas_at_once_keep_one_chain() {
    let (_db, a, b) = replicas().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    const EACH: usize = 15;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..EACH {
        for (server, mine) in [(&a, format!("a-{i}")), (&b, format!("b-{i}"))] {
            let server = server.clone();
            tasks.spawn(async move {
                assert_eq!(create(&server, &mine).await, 201);
                switch(&server, &mine, true).await;
                // Both replicas race to create the same name.
                create(&server, &format!("both-{i}")).await
            });
        }
    }
    let mut created = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            201 => created += 1,
            409 => {}
            other => panic!("creating a contested name answered {other}"),
        }
    }
    assert_eq!(created, EACH, "each contested name is created exactly once");

    // Bootstrap token, then per name pair: 2 creates, 2 switches; plus the winners.
    let expected = 1 + EACH * 4 + EACH;
    let report_a = a.get("/api/admin/audit/verify", ADMIN, &[]).await.json();
    let report_b = b.get("/api/admin/audit/verify", ADMIN, &[]).await.json();
    assert_eq!(report_a["problems"], json!([]), "{report_a}");
    assert_eq!(report_a["events"], expected, "{report_a}");
    assert_eq!(report_a, report_b, "both replicas read one chain");

    // Both replicas serve the same state.
    let client = a.create_token("client", "*", "production").await;
    accepted_within_bound(&b, &client).await;
    let from_a = a.get("/api/client/features", &client, &[]).await.json();
    let from_b = b.get("/api/client/features", &client, &[]).await.json();
    assert_eq!(from_a["features"].as_array().unwrap().len(), EACH * 3);
    assert_eq!(from_a, from_b);
}

#[tokio::test]
async fn a_replica_whose_listener_was_cut_off_catches_up() {
    let (db, a, b) = replicas().await;
    let client = a.create_token("client", "*", "production").await;
    accepted_within_bound(&b, &client).await;
    assert_eq!(create(&a, "checkout").await, 201);
    switch(&a, "checkout", true).await;
    let mut on_b = stream(&b, &client).await;
    let hello = on_b.next(BOUND).await.unwrap();
    assert_eq!(hello.json()["events"][0]["features"][0]["enabled"], true);

    // Cut both listeners off, then change the flag while they are reconnecting:
    // the notification goes nowhere, and B must catch up on reconnecting.
    let cut = db.query_text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'cordon-flags-listener'",
    );
    assert_eq!(cut, "2", "each replica has one listener");
    let t = Instant::now();
    switch(&a, "checkout", false).await;
    assert_eq!(
        next_about(&mut on_b, "checkout").await,
        ("feature-updated".into(), Some(false))
    );
    eprintln!(
        "after its listener was cut off, B caught up in {:.1} ms",
        millis(t.elapsed())
    );
    let polled = b.get("/api/client/features", &client, &[]).await;
    assert_eq!(flag_enabled(&polled.json(), "checkout"), Some(false));

    // Listening again, not just caught up once.
    switch(&a, "checkout", true).await;
    assert_eq!(next_about(&mut on_b, "checkout").await.1, Some(true));
}

async fn login(server: &Server, name: &str, password: &str) -> u16 {
    let body = serde_json::to_vec(&json!({"username": name, "password": password})).unwrap();
    server
        .request("POST", "/api/admin/login", &[], Some(body.as_slice()))
        .await
        .status
}

async fn add_user(server: &Server, name: &str) {
    let r = server
        .post_json(
            "/api/admin/user-admin",
            ADMIN,
            &json!({"username": name, "role": "editor", "password": format!("{name}-long-password")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn failed_logins_spread_over_replicas_count_together() {
    let (_db, a, b) = replicas().await;
    add_user(&a, "pat").await;
    // Four failures, two through each replica, are answered as wrong guesses; the
    // fifth (the third through A) reaches the limit, which each replica alone
    // would not have.
    for (i, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        assert_eq!(
            login(server, "pat", "a-wrong-guess").await,
            401,
            "guess {i}"
        );
    }
    assert_eq!(login(&a, "pat", "a-wrong-guess").await, 429);
    assert_eq!(login(&b, "pat", "pat-long-password").await, 429);
    assert_eq!(login(&a, "pat", "pat-long-password").await, 429);
    // Another name is not affected.
    add_user(&b, "quinn").await;
    assert_eq!(login(&a, "quinn", "quinn-long-password").await, 200);
}
