//! A running flag server on 127.0.0.1:0 over a fresh database, and a minimal
//! HTTP/1.1 client (one request per connection) to talk to it.
//!
//! The database is a temporary SQLite file, or with `CORDON_FLAGS_TEST_STORE=postgres`
//! a new PostgreSQL database on the server at `CORDON_TEST_POSTGRES_URL` (see
//! [`pg`]), so every test that uses [`start`] runs against either store.

#![allow(dead_code)]

pub mod pg;
pub mod sse;

use std::net::SocketAddr;
use std::sync::Arc;

use cordon_flags::{PgStore, ServeOptions, SqliteStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ADMIN: &str = "*:*.test-admin-secret-0123456789";

/// The variable that picks the store [`start`] uses: `sqlite` (the default) or
/// `postgres`.
pub const STORE_VAR: &str = "CORDON_FLAGS_TEST_STORE";

/// What a server's data lives in; dropped after the server.
enum Backing {
    Sqlite(tempfile::TempDir),
    Postgres(Arc<pg::TestDatabase>),
}

pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    _backing: Backing,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> Server {
    start_with(ServeOptions::default()).await
}

pub async fn start_with(options: ServeOptions) -> Server {
    match std::env::var(STORE_VAR).as_deref() {
        Err(_) | Ok("sqlite") => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("flags.db")).unwrap();
            serve(Arc::new(store), Backing::Sqlite(dir), options).await
        }
        Ok("postgres") => start_on(Arc::new(pg::TestDatabase::create()), options).await,
        Ok(other) => panic!("{STORE_VAR}={other:?}: use sqlite or postgres"),
    }
}

/// A server over the PostgreSQL database `db`, which other servers may share.
pub async fn start_on(db: Arc<pg::TestDatabase>, options: ServeOptions) -> Server {
    let store = PgStore::connect(&db.url)
        .unwrap_or_else(|e| panic!("cannot open the test database {}: {e}", db.name));
    serve(Arc::new(store), Backing::Postgres(db), options).await
}

async fn serve(store: Arc<dyn Store>, backing: Backing, options: ServeOptions) -> Server {
    cordon_flags::bootstrap_admin_token(store.as_ref(), Some(ADMIN)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        cordon_flags::serve(listener, store, options).await.unwrap();
    });
    Server {
        addr,
        task,
        _backing: backing,
    }
}

/// The address test clients connect from: not the server's own 127.0.0.1, so that the
/// frontend API's remoteAddress fill-in (the caller's address) is observable, and a
/// specification case "no remoteAddress in the context" is not accidentally matched by
/// a strategy listing 127.0.0.1.
pub const CLIENT_IP: &str = "127.0.0.2";

pub async fn connect_from_client_address(addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(CLIENT_IP.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Server {
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut stream = connect_from_client_address(self.addr).await;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        stream.write_all(&bytes).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse_response(&raw)
    }

    pub async fn get(&self, path: &str, token: &str, extra: &[(&str, &str)]) -> Response {
        let mut h = vec![("Authorization", token)];
        h.extend_from_slice(extra);
        self.request("GET", path, &h, None).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request("DELETE", path, &[("Authorization", token)], None)
            .await
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &serde_json::Value) -> Response {
        let b = serde_json::to_vec(body).unwrap();
        self.request("POST", path, &[("Authorization", token)], Some(&b))
            .await
    }

    /// Create a token through the admin API; returns its secret.
    pub async fn create_token(&self, ty: &str, project: &str, environment: &str) -> String {
        let r = self
            .post_json(
                "/api/admin/api-tokens",
                ADMIN,
                &serde_json::json!({"tokenName": "test", "type": ty, "project": project, "environment": environment}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["secret"].as_str().unwrap().to_owned()
    }

    pub async fn import(&self, environment: &str, state: &serde_json::Value) -> Response {
        self.post_json(
            &format!("/api/admin/state/import?environment={environment}"),
            ADMIN,
            state,
        )
        .await
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
