//! One way to run the store's statements on either backend: [`Db`], a
//! connection (or the transaction open on it) that runs SQL with
//! [`Param`]s and hands each result row to the caller as a [`SqlRow`].
//!
//! The typed queries are written once against [`Db`]. Their SQL is the
//! common ground of SQLite and PostgreSQL: parameters are written `?1`,
//! `?2` … (rewritten to `$1` … for PostgreSQL by [`numbered`]); an untyped
//! parameter that PostgreSQL cannot infer is cast (`CAST(?1 AS TEXT) IS
//! NULL`); aggregates whose type differs are cast too (`CAST(sum(x) AS
//! BIGINT)`: PostgreSQL's `sum` of a BIGINT is NUMERIC). Where the dialects
//! really differ, a query asks [`Db::dialect`].
//!
//! Both schemas store times as integer unix milliseconds, flags as 0/1 and
//! text as text (section 12 of docs/design.md), so a [`Param`] is one of
//! four things and a column is read as an integer, a text or bytes. Reading
//! is lenient where the dialects' types differ but the value does not:
//! PostgreSQL's `count(*)` is BIGINT, `length()` INTEGER and `EXISTS`
//! BOOLEAN, and [`SqlRow::int`] takes each as an `i64`.
//!
//! The PostgreSQL side is synchronous like SQLite's: [`PgDb`] runs each
//! statement with [`block_on`] on the runtime its pool lives on. From a
//! thread inside a tokio runtime (one that drives tasks, or tokio's
//! blocking pool, which tokio cannot tell apart) the statement runs on a
//! helper thread instead; the daemon's writer runs its jobs on a plain
//! thread, so only readers under `Store::blocking`, tests and the daemon's
//! start pay for that.
//!
//! Depends on rusqlite and tokio-postgres; nothing above the store.

use std::borrow::Cow;
use std::error::Error as StdError;

use chrono::{DateTime, Utc};
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::screen::Screen;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Which SQL dialect a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded store).
    Sqlite,
    /// PostgreSQL (the shared store).
    Postgres,
}

impl Dialect {
    /// What follows a text expression in `ORDER BY` so it sorts by bytes,
    /// as SQLite sorts text: nothing on SQLite, `COLLATE "C"` on PostgreSQL,
    /// whose database collation (en_US, ICU…) would otherwise order
    /// `"B"` after `"a"` and skip punctuation. SQLite knows no collation
    /// named `"C"`, so it cannot be written into shared SQL.
    pub fn bytewise(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " COLLATE \"C\"",
        }
    }
}

/// A value bound to a statement parameter. Its `Debug` shows integers but
/// only the length of text and bytes: a parameter may be a token value, and
/// tokio-postgres logs every statement's parameters at debug level.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    /// SQL NULL (of whatever type the parameter has).
    Null,
    /// An integer: a count, an ID, a time in unix milliseconds, a 0/1 flag.
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes (a sealed token value).
    Blob(&'a [u8]),
}

impl std::fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::Int(v) => write!(f, "Int({v})"),
            Self::Text(s) => write!(f, "Text(<{} bytes>)", s.len()),
            Self::Blob(b) => write!(f, "Blob(<{} bytes>)", b.len()),
        }
    }
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<i32> for Param<'_> {
    fn from(v: i32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<u32> for Param<'_> {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Self::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Param<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Self::Blob(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// Builds a `&[Param]` from values that convert into [`Param`]:
/// `p![channel.as_str(), millis(now)]`.
macro_rules! p {
    () => { &[] as &[$crate::store::sql::Param<'_>] };
    ($($value:expr),+ $(,)?) => {
        &[$($crate::store::sql::Param::from($value)),+] as &[$crate::store::sql::Param<'_>]
    };
}
pub(crate) use p;

/// Why a statement failed, per backend. The store turns it into a
/// `StoreError` naming what it was doing.
#[derive(Debug)]
pub enum SqlError {
    /// SQLite's error.
    Sqlite(rusqlite::Error),
    /// PostgreSQL's error.
    Postgres(tokio_postgres::Error),
    /// A pooled PostgreSQL connection could not be had.
    Pool(String),
    /// A column did not hold what the query expected (its type, or NULL).
    Column(String),
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(e) => write!(f, "{e}"),
            Self::Postgres(e) => match e.as_db_error() {
                // The server's own words (they name the constraint or
                // column, never a bound value).
                Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
                None => write!(f, "{e}"),
            },
            Self::Pool(e) => write!(f, "no PostgreSQL connection: {e}"),
            Self::Column(e) => f.write_str(e),
        }
    }
}

impl StdError for SqlError {}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

/// One result row.
pub trait SqlRow {
    /// Column `i` as an integer; `None` for NULL. Accepts every integer
    /// width and PostgreSQL's BOOLEAN (as 0/1).
    ///
    /// # Errors
    /// [`SqlError::Column`] when the column holds text or bytes.
    fn int(&self, i: usize) -> Result<Option<i64>, SqlError>;
    /// Column `i` as text; `None` for NULL.
    ///
    /// # Errors
    /// [`SqlError::Column`] when the column holds something else.
    fn text(&self, i: usize) -> Result<Option<String>, SqlError>;
    /// Column `i` as bytes; `None` for NULL.
    ///
    /// # Errors
    /// [`SqlError::Column`] when the column holds something else.
    fn blob(&self, i: usize) -> Result<Option<Vec<u8>>, SqlError>;

    /// Column `i` as an integer that must not be NULL.
    ///
    /// # Errors
    /// As [`SqlRow::int`], and [`SqlError::Column`] for NULL.
    fn get_int(&self, i: usize) -> Result<i64, SqlError> {
        self.int(i)?
            .ok_or_else(|| SqlError::Column(format!("column {i} is NULL, expected an integer")))
    }
    /// Column `i` as an instant (unix milliseconds) that must not be NULL;
    /// `col` names it in errors.
    ///
    /// # Errors
    /// As [`SqlRow::get_int`], and [`SqlError::Column`] for a number that
    /// is no time.
    fn time(&self, i: usize, col: &str) -> Result<DateTime<Utc>, SqlError> {
        let ms = self.get_int(i)?;
        instant(ms, col)
    }
    /// Column `i` as an optional instant (unix milliseconds); `col` names
    /// it in errors.
    ///
    /// # Errors
    /// As [`SqlRow::time`].
    fn opt_time(&self, i: usize, col: &str) -> Result<Option<DateTime<Utc>>, SqlError> {
        self.int(i)?.map(|ms| instant(ms, col)).transpose()
    }
    /// Column `i` as text that must not be NULL.
    ///
    /// # Errors
    /// As [`SqlRow::text`], and [`SqlError::Column`] for NULL.
    fn get_text(&self, i: usize) -> Result<String, SqlError> {
        self.text(i)?
            .ok_or_else(|| SqlError::Column(format!("column {i} is NULL, expected text")))
    }
}

fn instant(ms: i64, col: &str) -> Result<DateTime<Utc>, SqlError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| SqlError::Column(format!("{col} holds {ms}, which is not a time")))
}

/// A connection, or the transaction open on it, that runs SQL.
pub trait Db {
    /// The dialect it speaks.
    fn dialect(&self) -> Dialect;
    /// Runs a statement that returns no rows; answers how many rows it
    /// changed.
    ///
    /// # Errors
    /// The backend's refusal.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, SqlError>;
    /// Runs a query and hands each row to `each`, in order, stopping at
    /// the first error.
    ///
    /// # Errors
    /// The backend's refusal, or `each`'s error.
    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), SqlError>,
    ) -> Result<(), SqlError>;
    /// Runs statements without parameters (savepoints, `BEGIN`, DDL).
    ///
    /// # Errors
    /// The backend's refusal.
    fn batch(&self, sql: &str) -> Result<(), SqlError>;
    /// The store's screening set (the values free text is checked
    /// against before it is stored).
    fn screen(&self) -> &Screen;
}

impl dyn Db + '_ {
    /// Every row of a query, each turned into a `T` by `f`.
    ///
    /// # Errors
    /// As [`Db::query_each`].
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&dyn SqlRow) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        let mut out = Vec::new();
        self.query_each(sql, params, &mut |row| {
            out.push(f(row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query turned into a `T`, or `None` when it has
    /// none.
    ///
    /// # Errors
    /// As [`Db::query_each`].
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        f: impl FnOnce(&dyn SqlRow) -> Result<T, SqlError>,
    ) -> Result<Option<T>, SqlError> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, &mut |row| {
            if let Some(f) = f.take() {
                out = Some(f(row)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The one row a query must return (an aggregate, say).
    ///
    /// # Errors
    /// As [`Db::query_each`], and [`SqlError::Column`] when there is no
    /// row.
    pub fn query_one<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        f: impl FnOnce(&dyn SqlRow) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| SqlError::Column("the query returned no row".to_owned()))
    }
}

// ---- SQLite ----

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Self::Null => ValueRef::Null,
            Self::Int(v) => ValueRef::Integer(v),
            Self::Text(s) => ValueRef::Text(s.as_bytes()),
            Self::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl SqlRow for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, SqlError> {
        Ok(self.get::<_, Option<i64>>(i)?)
    }

    fn text(&self, i: usize) -> Result<Option<String>, SqlError> {
        Ok(self.get::<_, Option<String>>(i)?)
    }

    fn blob(&self, i: usize) -> Result<Option<Vec<u8>>, SqlError> {
        Ok(self.get::<_, Option<Vec<u8>>>(i)?)
    }
}

/// A SQLite connection (or the transaction open on it) of a store, with
/// the store's screening set. It derefs to the connection, so the queries
/// not yet written against [`Db`] keep using rusqlite directly.
pub struct SqliteDb<'a> {
    conn: &'a rusqlite::Connection,
    screen: &'a Screen,
}

impl<'a> SqliteDb<'a> {
    /// Wraps a connection of the store whose screening set is `screen`.
    pub fn new(conn: &'a rusqlite::Connection, screen: &'a Screen) -> Self {
        Self { conn, screen }
    }
}

impl std::ops::Deref for SqliteDb<'_> {
    type Target = rusqlite::Connection;

    fn deref(&self) -> &rusqlite::Connection {
        self.conn
    }
}

impl Db for SqliteDb<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn screen(&self) -> &Screen {
        self.screen
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, SqlError> {
        let changed = self
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }

    fn batch(&self, sql: &str) -> Result<(), SqlError> {
        Ok(self.execute_batch(sql)?)
    }
}

// ---- PostgreSQL ----

/// `sql` with SQLite's numbered parameters (`?1`) as PostgreSQL's (`$1`).
/// Quoted text and identifiers are left alone.
pub fn numbered(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match *self {
            Self::Null => Ok(IsNull::Yes),
            Self::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(format!("an integer parameter cannot be bound to {ty}").into()),
            },
            // Checked here because `accepts` takes every type (a NULL fits
            // any): text bound where PostgreSQL inferred a number would
            // otherwise be sent as that number's raw bytes.
            Self::Text(s) if <&str as ToSql>::accepts(ty) => s.to_sql(ty, out),
            Self::Blob(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            Self::Text(_) => Err(format!("a text parameter cannot be bound to {ty}").into()),
            Self::Blob(_) => Err(format!("a bytes parameter cannot be bound to {ty}").into()),
        }
    }

    // Every type: `to_sql` decides per value, and a NULL fits any column.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl SqlRow for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>, SqlError> {
        let ty = self
            .columns()
            .get(i)
            .map(|c| c.type_().clone())
            .ok_or_else(|| SqlError::Column(format!("the row has no column {i}")))?;
        Ok(match ty {
            Type::INT8 => self.try_get::<_, Option<i64>>(i)?,
            Type::INT4 => self.try_get::<_, Option<i32>>(i)?.map(i64::from),
            Type::INT2 => self.try_get::<_, Option<i16>>(i)?.map(i64::from),
            Type::BOOL => self.try_get::<_, Option<bool>>(i)?.map(i64::from),
            other => {
                return Err(SqlError::Column(format!(
                    "column {i} ({}) is {other}, expected an integer",
                    self.columns()[i].name()
                )));
            }
        })
    }

    fn text(&self, i: usize) -> Result<Option<String>, SqlError> {
        Ok(self.try_get::<_, Option<String>>(i)?)
    }

    fn blob(&self, i: usize) -> Result<Option<Vec<u8>>, SqlError> {
        Ok(self.try_get::<_, Option<Vec<u8>>>(i)?)
    }
}

/// Runs `future` to its end on `runtime` (the pool's) from synchronous
/// code. On a thread that drives async tasks (a caller that did not go
/// through `Store::blocking`, or a test's runtime) blocking there is not
/// allowed, so the future runs on a helper thread while this one waits:
/// slower, but the store works from anywhere, as SQLite's does.
pub fn block_on<F>(runtime: &tokio::runtime::Handle, future: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A pooled PostgreSQL connection used synchronously: each statement runs
/// to its end with `block_on` on `runtime`, the runtime the pool's
/// connections live on.
pub struct PgDb<'a> {
    client: &'a deadpool_postgres::ClientWrapper,
    runtime: &'a tokio::runtime::Handle,
    screen: &'a Screen,
}

impl<'a> PgDb<'a> {
    /// Wraps a connection of a pool that lives on `runtime`.
    pub fn new(
        client: &'a deadpool_postgres::ClientWrapper,
        runtime: &'a tokio::runtime::Handle,
        screen: &'a Screen,
    ) -> Self {
        Self {
            client,
            runtime,
            screen,
        }
    }

    fn params<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
    }
}

impl Db for PgDb<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn screen(&self) -> &Screen {
        self.screen
    }

    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, SqlError> {
        let sql = numbered(sql);
        let bound = Self::params(params);
        block_on(self.runtime, async {
            let stmt = self.client.prepare_cached(&sql).await?;
            Ok(self.client.execute(&stmt, &bound).await?)
        })
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn SqlRow) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        let sql = numbered(sql);
        let bound = Self::params(params);
        let rows = block_on(self.runtime, async {
            let stmt = self.client.prepare_cached(&sql).await?;
            self.client.query(&stmt, &bound).await
        })?;
        for row in &rows {
            each(row)?;
        }
        Ok(())
    }

    fn batch(&self, sql: &str) -> Result<(), SqlError> {
        Ok(block_on(self.runtime, self.client.batch_execute(sql))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_shows_no_text_or_bytes() {
        let shown = format!(
            "{:?}",
            p![7_i64, "a-token-value", b"sealed".as_slice(), None::<i64>]
        );
        assert_eq!(shown, "[Int(7), Text(<13 bytes>), Blob(<6 bytes>), Null]");
    }

    #[test]
    fn numbered_rewrites_parameters_outside_quotes_only() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?\" = $12"
        );
        assert!(matches!(numbered("SELECT 1"), Cow::Borrowed(_)));
    }

    #[test]
    fn sqlite_runs_params_and_reads_rows() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let screen = Screen::default();
        let db: &dyn Db = &SqliteDb::new(&conn, &screen);
        db.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB)")
            .unwrap();
        let blob = vec![1_u8, 2, 3];
        assert_eq!(
            db.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3), (?4, ?5, ?6)",
                p![7_i64, "x", &blob, None::<i64>, None::<&str>, None::<&[u8]>],
            )
            .unwrap(),
            2
        );
        let rows = db
            .query_map("SELECT i, s, b FROM t ORDER BY i IS NULL", p![], |r| {
                Ok((r.int(0)?, r.text(1)?, r.blob(2)?))
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (Some(7), Some("x".to_owned()), Some(blob.clone())),
                (None, None, None)
            ]
        );
        let n = db
            .query_one("SELECT count(*) FROM t", p![], |r| r.get_int(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(
            db.query_opt("SELECT i FROM t WHERE i = ?1", p![8_i64], |r| r.get_int(0))
                .unwrap()
                .is_none()
        );
        let err = db
            .query_one("SELECT s FROM t WHERE i IS NULL", p![], |r| r.get_text(0))
            .unwrap_err();
        assert!(err.to_string().contains("NULL"), "{err}");
    }
}
