//! The web console (`/console`) driven by a real headless Chromium through chromedriver
//! (WebDriver, `fantoccini`), as a person would use it: sign in, create a flag, enable,
//! kill, open and decide change requests, read the audit log.
//!
//! - `console_on_the_real_server`: a real flag server (`common::start`), everything it
//!   serves today.
//! - `change_requests_on_the_real_server`: the change-request walk (four eyes: the
//!   author's approval refused, another person approves and applies, then a kill).
//!
//! Chromium and chromedriver are Debian's (`chromium`, `chromium-driver`, installed by
//! `scripts/test`); a machine without them fails these tests. Screenshots of the main
//! pages go to `target/console-screenshots/`.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

// ---------------------------------------------------------------------------------
// The browser

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    /// chromedriver and the Chromium it started share one process group of their own;
    /// end all of it, also when a test failed before closing the session.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's {package} (scripts/test does); the console \
                 tests need a real browser"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100"],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await;
            match builder {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    panic!("chromedriver on {url} did not start a Chromium session: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Browser { client, driver }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(selector)).await {
            Ok(e) => e,
            Err(e) => panic!("no {selector} on {}: {e}", self.path().await),
        }
    }

    async fn text(&self, selector: &str) -> String {
        self.css(selector).await.text().await.unwrap()
    }

    async fn fill(&self, selector: &str, value: &str) {
        self.css(selector).await.send_keys(value).await.unwrap();
    }

    /// Click the button labelled `label` inside `scope` (a CSS selector; `body` for
    /// anywhere).
    async fn press(&self, scope: &str, label: &str) {
        let scope = self.css(scope).await;
        let xpath = format!(".//button[normalize-space()='{label}']");
        let button = scope
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no button {label:?}: {e}"));
        self.click_for_page(button, &format!("pressing {label:?}"))
            .await;
    }

    /// Click the submit button `selector` and wait for the answer's page.
    async fn submit(&self, selector: &str) {
        let button = self.css(selector).await;
        self.click_for_page(button, &format!("submitting {selector}"))
            .await;
    }

    /// Every button submits a form: click it and wait until the old page is gone, so
    /// what is read next (the path, an alert) comes from the answer, not from the
    /// page the button was on.
    async fn click_for_page(&self, button: fantoccini::elements::Element, what: &str) {
        let old = self.css("html").await;
        button.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "{what} loaded no page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn sign_in_with_password(&self, base: &str, user: &str, password: &str) {
        self.goto(&format!("{base}/console/login")).await;
        self.fill("#username", user).await;
        self.fill("#password", password).await;
        self.submit("#sign-in").await;
        assert!(
            self.path().await.starts_with("/console/flags"),
            "{user} not signed in: {}",
            self.text("main").await
        );
    }

    async fn sign_out(&self) {
        self.press("header", "Log out").await;
        assert_eq!(self.path().await, "/console/login");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
}

// ---------------------------------------------------------------------------------
// The real server, today

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_the_real_server() {
    let server = common::start().await;
    let base = format!("http://{}", server.addr);
    let browser = Browser::start().await;

    // Not signed in: every page leads to the login.
    browser.goto(&format!("{base}/console/flags")).await;
    assert_eq!(browser.path().await, "/console/login");
    // A wrong token is refused with the API's message, and no session.
    browser
        .fill("#token", "*:*.not-a-real-token-0000000000")
        .await;
    browser.submit("#sign-in-token").await;
    assert_eq!(browser.path().await, "/console/login");
    assert!(browser.text(".alert.error").await.contains("HTTP 401"));

    // A service token is not a person: it cannot sign in to the console.
    browser.fill("#token", common::ADMIN).await;
    browser.submit("#sign-in-token").await;
    assert_eq!(browser.path().await, "/console/login");
    assert!(browser.text(".alert.error").await.contains("HTTP 403"));
    let r = server
        .post_json(
            "/api/admin/user-admin",
            common::ADMIN,
            &json!({"username": "root", "role": "admin", "password": "root-password-1"}),
        )
        .await;
    assert_eq!(r.status, 201);
    browser
        .sign_in_with_password(&base, "root", "root-password-1")
        .await;
    assert_eq!(browser.path().await, "/console/flags");

    // Create a flag whose description is hostile markup.
    let hostile = r#"<script>document.title="owned"</script><img src=x onerror=alert(1)>"#;
    browser.fill("#name", "checkout-v2").await;
    browser.fill("#description", hostile).await;
    browser
        .press("#create-flag", "Create (off everywhere)")
        .await;
    assert_eq!(
        browser.path().await,
        "/console/projects/default/flags/checkout-v2"
    );
    assert_eq!(browser.text("#flag-name").await, "checkout-v2");
    assert!(
        browser.text("main").await.contains(hostile),
        "shown as text"
    );
    assert_ne!(browser.client.title().await.unwrap(), "owned");

    // A name the API refuses: its message, on the flags page.
    browser.goto(&format!("{base}/console/flags")).await;
    browser.fill("#name", "checkout-v2").await;
    browser
        .press("#create-flag", "Create (off everywhere)")
        .await;
    let refusal = browser.text(".alert.error").await;
    assert!(refusal.contains("HTTP 409"), "{refusal}");

    // Enable in development (unprotected: direct), then kill it from the flags list.
    browser
        .goto(&format!(
            "{base}/console/projects/default/flags/checkout-v2"
        ))
        .await;
    browser.press("[data-env=development]", "Enable").await;
    assert_eq!(
        browser.text("[data-env=development] .state").await,
        "on",
        "enabled in development"
    );
    let state = server
        .get(
            "/api/admin/projects/default/features/checkout-v2/environments/development",
            common::ADMIN,
            &[],
        )
        .await
        .json();
    assert_eq!(state["enabled"], true);

    // Evaluations reported by an SDK show on the flag page.
    let client = server.create_token("client", "*", "development").await;
    let metrics = json!({"appName": "shop", "instanceId": "i1", "bucket": {
        "start": "2024-01-01T00:00:00Z", "stop": "2024-01-01T00:01:00Z",
        "toggles": {"checkout-v2": {"yes": 7, "no": 3}}}});
    assert_eq!(
        server
            .post_json("/api/client/metrics", &client, &metrics)
            .await
            .status,
        202
    );
    browser
        .goto(&format!(
            "{base}/console/projects/default/flags/checkout-v2"
        ))
        .await;
    let row = browser.text("#metrics tbody tr").await;
    assert!(
        row.contains("shop") && row.contains('7') && row.contains('3'),
        "{row}"
    );
    browser.screenshot("flag").await;

    browser.goto(&format!("{base}/console/flags")).await;
    let cell = "tr[data-flag=checkout-v2] td[data-env=development]";
    assert!(browser.text(cell).await.starts_with("on"));
    browser.screenshot("flags").await;
    browser.press(cell, "Kill").await;
    assert_eq!(browser.path().await, "/console/flags?project=default");
    assert_eq!(browser.text(cell).await, "off");
    let state = server
        .get(
            "/api/admin/projects/default/features/checkout-v2/environments/development",
            common::ADMIN,
            &[],
        )
        .await
        .json();
    assert_eq!(state["enabled"], false, "the kill reached the API");

    // The audit log: the chain verifies, the kill is there with its diff.
    browser.goto(&format!("{base}/console/audit")).await;
    let verify = browser.text("#verify").await;
    assert!(verify.starts_with("Chain verified"), "{verify}");
    let log = browser.text("table.events").await;
    assert!(log.contains("feature-environment-disabled"), "{log}");
    browser.screenshot("audit").await;

    // CSRF: the session cookie alone does not make a form; a POST without the token
    // (or with another session's) is refused and changes nothing.
    let cookie = browser
        .client
        .get_named_cookie("cordon_console")
        .await
        .unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.path(), Some("/console"));
    let cookie_header = format!("cordon_console={}", cookie.value());
    for form in ["back=flags", "csrf=0000&back=flags"] {
        let r = raw_form(
            server.addr,
            "/console/projects/default/flags/checkout-v2/environments/development/on",
            &cookie_header,
            form,
        )
        .await;
        assert_eq!(
            r.status,
            403,
            "{form}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let state = server
        .get(
            "/api/admin/projects/default/features/checkout-v2/environments/development",
            common::ADMIN,
            &[],
        )
        .await
        .json();
    assert_eq!(state["enabled"], false, "a forged form changed nothing");
    // Oversized forms are refused before anything is parsed.
    let big = format!("csrf=x&back={}", "a".repeat(64 * 1024));
    let r = raw_form(server.addr, "/console/flags", &cookie_header, &big).await;
    assert_eq!(r.status, 413);
    // Pages are not cacheable, not frameable, and run no script.
    let r = server.get("/console/login", "", &[]).await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Logging out forgets the session.
    browser.goto(&format!("{base}/console/flags")).await;
    browser.sign_out().await;
    browser.goto(&format!("{base}/console/flags")).await;
    assert_eq!(browser.path().await, "/console/login");
    browser.client.clone().close().await.unwrap();
}

/// POST a urlencoded form with a cookie (the test client in `common` sends JSON).
async fn raw_form(addr: SocketAddr, path: &str, cookie: &str, form: &str) -> common::Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let head = String::from_utf8_lossy(&raw);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = head
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.as_bytes().to_vec())
        .unwrap_or_default();
    common::Response {
        status,
        headers: Vec::new(),
        body,
    }
}

// ---------------------------------------------------------------------------------
// Change requests: one walk, against the contract double today and the real server
// after the merge

/// Two people: `author` (an approver) opens and submits a change request enabling a flag
/// in the protected `production`; their own approval is refused; `approver` approves
/// and applies it; then the flag is killed there.
async fn change_request_walk(
    browser: &Browser,
    base: &str,
    author: (&str, &str),
    approver: (&str, &str),
) {
    browser
        .sign_in_with_password(base, author.0, author.1)
        .await;
    browser.fill("#name", "new-pricing").await;
    browser.fill("#description", "prices for 2025").await;
    browser
        .press("#create-flag", "Create (off everywhere)")
        .await;
    let flag_page = "/console/projects/default/flags/new-pricing";
    assert_eq!(browser.path().await, flag_page);
    assert!(
        browser
            .text("[data-env=production] .badge.protected")
            .await
            .starts_with("protected"),
        "production is shown as protected"
    );

    // Enabling in production opens a change request instead.
    browser
        .press("[data-env=production]", "Request enable")
        .await;
    let cr_page = browser.path().await;
    assert!(
        cr_page.starts_with("/console/projects/default/change-requests/"),
        "{cr_page}"
    );
    assert_eq!(browser.text("#state").await, "Draft");
    let diff = browser.text(".feature .diff").await;
    assert!(
        diff.contains("-   \"enabled\": false,") && diff.contains("+   \"enabled\": true,"),
        "the diff shows the switch: {diff}"
    );
    browser.press("#transitions", "Submit for review").await;
    assert_eq!(browser.text("#state").await, "In review");

    // Four eyes: the author cannot approve it; the refusal is the server's, in words.
    browser.press("#transitions", "Approve").await;
    let refusal = browser.text(".alert.error").await;
    assert!(
        refusal.contains("own"),
        "the refusal names the reason: {refusal}"
    );
    assert!(refusal.contains("HTTP 403"), "{refusal}");
    assert_eq!(browser.text("#state").await, "In review", "still in review");
    browser.sign_out().await;

    // Someone else approves and applies it.
    browser
        .sign_in_with_password(base, approver.0, approver.1)
        .await;
    browser
        .goto(&format!("{base}/console/projects/default/change-requests"))
        .await;
    assert!(browser.text("#change-requests").await.contains("In review"));
    browser.goto(&format!("{base}{cr_page}")).await;
    browser.fill("#comment", "looks right").await;
    browser.press("#transitions", "Approve").await;
    assert_eq!(browser.text("#state").await, "Approved");
    assert!(browser.text("#summary").await.contains(approver.0));
    browser.screenshot("change-request").await;
    browser.press("#transitions", "Apply").await;
    assert_eq!(browser.text("#state").await, "Applied");

    // It is on in production now; the kill is direct (break-glass), no request.
    browser.goto(&format!("{base}{flag_page}")).await;
    assert_eq!(browser.text("[data-env=production] .state").await, "on");
    browser.press("[data-env=production]", "Kill").await;
    assert_eq!(browser.path().await, flag_page);
    assert_eq!(browser.text("[data-env=production] .state").await, "off");
    browser.sign_out().await;
}

/// The four-eyes walk on a real server, with real users and a protected `production`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_requests_on_the_real_server() {
    let server = common::start().await;
    for (user, role, password) in [
        // alice may approve, only not her own request.
        ("alice", "approver", "alice-password-1"),
        ("bob", "approver", "bob-password-1"),
    ] {
        let r = server
            .post_json(
                "/api/admin/user-admin",
                common::ADMIN,
                &json!({"username": user, "role": role, "password": password}),
            )
            .await;
        assert!(
            r.status < 300,
            "{user}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let body = serde_json::to_vec(&json!({"changeRequestsEnabled": true, "requiredApprovals": 1}))
        .unwrap();
    let r = server
        .request(
            "PUT",
            "/api/admin/projects/default/environments/production/change-requests/config",
            &[("Authorization", common::ADMIN)],
            Some(&body),
        )
        .await;
    assert!(
        r.status < 300,
        "{} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let browser = Browser::start().await;
    change_request_walk(
        &browser,
        &format!("http://{}", server.addr),
        ("alice", "alice-password-1"),
        ("bob", "bob-password-1"),
    )
    .await;
    // The server saw the request applied by bob and the kill, in its audit chain.
    let state = server
        .get(
            "/api/admin/projects/default/features/new-pricing/environments/production",
            common::ADMIN,
            &[],
        )
        .await
        .json();
    assert_eq!(state["enabled"], false);
    let events = server
        .get("/api/admin/events?limit=1000", common::ADMIN, &[])
        .await
        .json();
    let seen: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["createdBy"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (action, by) in [
        ("feature-created", "user:alice"),
        ("change-request-submitted", "user:alice"),
        ("change-request-approved", "user:bob"),
        ("change-request-applied", "user:bob"),
        ("feature-environment-disabled", "user:bob"),
    ] {
        assert!(
            seen.iter().any(|(a, b)| a == action && b == by),
            "no {action} by {by} in {seen:?}"
        );
    }
    let verify = server
        .get("/api/admin/audit/verify", common::ADMIN, &[])
        .await
        .json();
    assert_eq!(verify["problems"], json!([]), "{verify}");
    browser.client.clone().close().await.unwrap();
}
