//! The seam between the store's logic and a SQL database driver.
//!
//! Every [`Store`](crate::Store) operation is written once, in `store.rs`, against
//! [`Sql`]: run a statement, read rows, announce a change. A [`Driver`] provides it —
//! [`SqliteStore`](crate::SqliteStore) over rusqlite, [`PgStore`](crate::PgStore) over
//! tokio-postgres — and says how reads, consistent reads and write transactions begin
//! and end, which is where the two really differ (one file and one writer, or one
//! server shared by replicas that must not fork the audit chain).
//!
//! SQL is written once, in what both dialects accept: `?1`-style parameters (rewritten
//! to `$1` for PostgreSQL), `CAST(?n AS TEXT)` where PostgreSQL cannot infer a
//! parameter's type, `ON CONFLICT` upserts. JSON columns are written as [`Json`] and
//! read with [`Columns::json`]: text in SQLite, `jsonb` in PostgreSQL.
//!
//! What it does not do: pool connections or retry; drivers do that.

use tokio_postgres::types::{FromSql, IsNull, ToSql as PgToSql, Type, to_sql_checked};

use crate::store::{ChangeWatch, OnChange, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// A statement parameter both drivers can bind.
pub(crate) trait Param: Sync {
    fn sqlite(&self) -> &dyn rusqlite::ToSql;
    fn pg(&self) -> &(dyn PgToSql + Sync);
}

impl<T: rusqlite::ToSql + PgToSql + Sync> Param for T {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn pg(&self) -> &(dyn PgToSql + Sync) {
        self
    }
}

/// A value for a JSON column: text in SQLite, `jsonb` in PostgreSQL.
#[derive(Debug)]
pub(crate) struct Json(pub String);

impl Json {
    /// `v` as stored: through [`crate::wire`], so unknown operators survive.
    pub(crate) fn of<T: serde::Serialize>(v: &T) -> Self {
        Json(crate::wire::to_value(v).to_string())
    }
}

impl rusqlite::ToSql for Json {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.0.as_str().into())
    }
}

impl PgToSql for Json {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The binary jsonb format: a version byte, then the text.
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSONB | Type::JSON | Type::TEXT | Type::VARCHAR)
    }

    to_sql_checked!();
}

/// The text of a JSON column as PostgreSQL sends it.
pub(crate) struct JsonText(pub String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == Type::JSONB {
            raw.strip_prefix(&[1])
                .ok_or("a jsonb value in an unknown format")?
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSONB | Type::JSON | Type::TEXT | Type::VARCHAR)
    }
}

/// One row of a result, column by column (0-based). A column of another type than
/// asked for (a database edited by hand) is an error, never a panic.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn int32(&self, i: usize) -> Result<i32>;
    fn opt_int32(&self, i: usize) -> Result<Option<i32>>;
    fn flag(&self, i: usize) -> Result<bool>;
    fn opt_flag(&self, i: usize) -> Result<Option<bool>>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>>;
    fn json(&self, i: usize) -> Result<String>;
    fn opt_json(&self, i: usize) -> Result<Option<String>>;
}

/// Implements [`Columns`] for a driver's row type with a generic getter `$get(row, i)`
/// for every column type, and `$json` / `$opt_json` for JSON columns.
macro_rules! impl_columns {
    ($row:ty, $get:ident, $json:ident, $opt_json:ident) => {
        impl crate::sql::Columns for $row {
            fn text(&self, i: usize) -> Result<String> {
                $get(self, i)
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>> {
                $get(self, i)
            }
            fn int(&self, i: usize) -> Result<i64> {
                $get(self, i)
            }
            fn opt_int(&self, i: usize) -> Result<Option<i64>> {
                $get(self, i)
            }
            fn int32(&self, i: usize) -> Result<i32> {
                $get(self, i)
            }
            fn opt_int32(&self, i: usize) -> Result<Option<i32>> {
                $get(self, i)
            }
            fn flag(&self, i: usize) -> Result<bool> {
                $get(self, i)
            }
            fn opt_flag(&self, i: usize) -> Result<Option<bool>> {
                $get(self, i)
            }
            fn bytes(&self, i: usize) -> Result<Vec<u8>> {
                $get(self, i)
            }
            fn json(&self, i: usize) -> Result<String> {
                $json(self, i)
            }
            fn opt_json(&self, i: usize) -> Result<Option<String>> {
                $opt_json(self, i)
            }
        }
    };
}
pub(crate) use impl_columns;

/// A connection or transaction of one driver.
pub(crate) trait Sql {
    /// Run a statement; how many rows it changed. `action` names it in errors.
    fn execute(&self, action: &'static str, sql: &str, params: &[&dyn Param]) -> Result<u64>;
    /// Run a query, calling `row` for every row.
    fn each(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&dyn Param],
        row: &mut dyn FnMut(&dyn Columns) -> Result<()>,
    ) -> Result<()>;
    /// Tell other servers sharing the database that the state is now at `revision`,
    /// when (and only if) this transaction commits. Nothing for a store nobody shares.
    fn announce(&self, revision: i64) -> Result<()>;
}

impl dyn Sql + '_ {
    /// Every row, through `read`.
    pub(crate) fn rows<T>(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&dyn Param],
        mut read: impl FnMut(&dyn Columns) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.each(action, sql, params, &mut |r| {
            out.push(read(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, through `read`, if there is one.
    pub(crate) fn row<T>(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&dyn Param],
        read: impl FnOnce(&dyn Columns) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut read = Some(read);
        let mut out = None;
        self.each(action, sql, params, &mut |r| {
            if let Some(read) = read.take() {
                out = Some(read(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether the query returns any row.
    pub(crate) fn exists(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&dyn Param],
    ) -> Result<bool> {
        Ok(self.row(action, sql, params, |_| Ok(()))?.is_some())
    }

    /// Run `f` inside a savepoint of this transaction: on success its writes stay, on
    /// error they are undone and the transaction goes on (PostgreSQL would otherwise
    /// refuse every later statement). The outer error is the database failing to set
    /// or undo the savepoint; the inner one is `f`'s.
    pub(crate) fn savepoint<T>(
        &self,
        name: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<Result<T>> {
        self.execute("set a savepoint", &format!("SAVEPOINT {name}"), &[])?;
        let out = f();
        if out.is_err() {
            self.execute(
                "undo the work of a savepoint",
                &format!("ROLLBACK TO SAVEPOINT {name}"),
                &[],
            )?;
        }
        self.execute(
            "release a savepoint",
            &format!("RELEASE SAVEPOINT {name}"),
            &[],
        )?;
        Ok(out)
    }
}

/// What a database driver provides so that the store's logic runs on it.
pub(crate) trait Driver: Send + Sync + 'static {
    /// Run `f` on a connection, outside any transaction.
    fn read<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T>;
    /// Run `f` in a read-only transaction that sees one state throughout.
    fn read_consistent<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T>;
    /// Run `f` in a transaction that may append to the audit log, and commit it when
    /// `f` succeeds (on error nothing is written). Such transactions are serialized,
    /// across every server sharing the database, so the chain never forks.
    fn change<T>(&self, action: &'static str, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T>;
    /// Run `f` in a transaction that writes no audit event (registrations, metrics).
    fn write<T>(&self, action: &'static str, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T>;
    /// See [`Store::audit_anchor`](crate::Store::audit_anchor).
    fn audit_anchor(&self) -> Result<Option<crate::audit::Anchor>>;
    /// See [`Store::watch_changes`](crate::Store::watch_changes).
    fn watch_changes(&self, on_change: OnChange) -> Option<ChangeWatch> {
        let _ = on_change;
        None
    }
}

/// `sql` with `?1`-style parameters as PostgreSQL writes them (`$1`). The SQL here
/// never has a `?` inside a string literal.
pub(crate) fn numbered_dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollars() {
        assert_eq!(
            numbered_dollars("SELECT ?1, ?12 WHERE a = ?2 AND b IS NULL"),
            "SELECT $1, $12 WHERE a = $2 AND b IS NULL"
        );
    }
}
