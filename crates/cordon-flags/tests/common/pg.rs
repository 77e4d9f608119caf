//! Throw-away PostgreSQL databases for tests: `CREATE DATABASE` with a random name on
//! the server at `CORDON_TEST_POSTGRES_URL`, `DROP DATABASE ... WITH (FORCE)` when the
//! last handle goes away.

use std::future::Future;

/// The variable naming a PostgreSQL server tests may create databases on.
pub const URL_VAR: &str = "CORDON_TEST_POSTGRES_URL";

/// The URL of the test server. Panics (a test that needs PostgreSQL fails, it does not
/// skip) when the variable is unset.
pub fn server_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set: these tests need a PostgreSQL server where they may \
             create databases. Set it like \
             {URL_VAR}=postgres://cordon_test:cordon_test@127.0.0.1/postgres \
             (scripts/test starts PostgreSQL and creates that role)"
        )
    })
}

/// Run `f` to completion on a runtime of its own, on a thread of its own, so it works
/// from synchronous tests, from async ones, and from `Drop`.
pub fn on_own_runtime<T: Send>(f: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a test runtime")
                .block_on(f)
        })
        .join()
        .expect("the test database thread panicked")
    })
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR} ({url}): {e}"));
    tokio::spawn(connection);
    client
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

/// A database of its own on the test server.
pub struct TestDatabase {
    server_url: String,
    pub name: String,
    /// Connects to this database.
    pub url: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        let server_url = server_url();
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("random bytes");
        let name = format!(
            "cordon_test_{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        on_own_runtime(async {
            admin_client(&server_url)
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        });
        Self {
            url: with_database(&server_url, &name),
            server_url,
            name,
        }
    }

    /// A store on this database.
    pub fn open_store(&self) -> cordon_flags::PgStore {
        cordon_flags::PgStore::connect(&self.url)
            .unwrap_or_else(|e| panic!("cannot open the test database {}: {e}", self.name))
    }

    /// Run SQL in this database, as someone with direct access would; an error is
    /// the server's message.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        on_own_runtime(async { admin_client(&self.url).await.batch_execute(sql).await })
            .map_err(|e| e.as_db_error().map_or(e.to_string(), |d| d.to_string()))
    }

    /// The first column of the first row of `sql`, as text.
    pub fn query_text(&self, sql: &str) -> String {
        on_own_runtime(async {
            let rows = admin_client(&self.url)
                .await
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_default()
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (url, name) = (&self.server_url, &self.name);
        on_own_runtime(async {
            let dropped = admin_client(url)
                .await
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            if let Err(e) = dropped {
                eprintln!("warning: cannot drop the test database {name}: {e}");
            }
        });
    }
}
