//! From a `postgres://` URL to a checked connection pool: [`PgTarget`]
//! (the parsed URL and its TLS mode), [`PgPool`] (deadpool-postgres over
//! tokio-postgres, TLS through rustls).
//!
//! # TLS
//!
//! `sslmode` in the URL's query selects it, as in libpq, but stricter:
//!
//! - `disable`: plaintext. For a server on loopback or a trusted network.
//! - `require` (the default for TCP hosts) and its synonym `verify-full`:
//!   TLS, the certificate chain verified against the CA file named by
//!   `sslrootcert` (PEM), or against the system's roots when there is none
//!   (or `sslrootcert=system`), and the host name checked. libpq's `require`
//!   checks neither; a daemon that hands out tokens should not talk to an
//!   unverified server, so linetokd's does both.
//! - `prefer`, `allow` and `verify-ca` are refused with a message saying
//!   what to use: the first two fall back to plaintext without telling, the
//!   last skips the host-name check.
//!
//! A URL whose hosts are all unix sockets (`?host=/run/postgresql`) has no
//! TLS (PostgreSQL offers none there): its default is `disable`, and an
//! explicit `require` is refused.
//!
//! rustls uses the crypto provider the rest of the tree uses (aws-lc-rs,
//! through reqwest and jsonwebtoken), named explicitly so a second provider
//! in the tree could never make the choice ambiguous.
//!
//! # Secrets
//!
//! The caller reads the URL from a secret file. The password lives only in
//! the tokio-postgres `Config` (whose `Debug` masks it); every message uses
//! [`PgTarget::redacted`], built from the parsed user, hosts, ports and
//! database, and driver messages are scrubbed of the password before they
//! are shown (defence in depth: none is known to quote it).
//!
//! Reads the CA file or the system's certificate store (rustls-native-certs,
//! which honours `SSL_CERT_FILE`/`SSL_CERT_DIR` as OpenSSL does) when TLS is
//! used; reads no clock and no configuration.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use percent_encoding::percent_decode_str;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgError;

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (`sslmode=disable`).
    Disable,
    /// TLS with a verified certificate and host name (`sslmode=require`).
    Require(Roots),
}

/// Which certificates a TLS connection trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's trusted roots.
    System,
    /// Only the CA certificates in this PEM file (`sslrootcert`).
    CaFile(PathBuf),
}

/// A parsed `postgres://` URL: where to connect, as whom, and how.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: TlsMode,
    redacted: String,
}

impl std::fmt::Debug for PgTarget {
    // The redacted form only: tokio-postgres masks the password in its
    // Debug, but nothing here needs more than the redacted URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("target", &self.redacted)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The two URL prefixes PostgreSQL accepts.
const PREFIXES: [&str; 2] = ["postgres://", "postgresql://"];

impl PgTarget {
    /// Parses `url` (`postgres://user:password@host:port/database?sslmode=…`,
    /// the user and password percent-encoded) and its TLS mode.
    ///
    /// # Errors
    ///
    /// [`PgError::Url`] naming what is wrong: not a `postgres://` URL, an
    /// unencoded `@` in the credentials, an unknown option or value, an
    /// `sslmode` linetokd refuses, `require` on a unix socket.
    pub fn parse(url: &str) -> Result<Self, PgError> {
        let url = url.trim();
        // One URL on one line: anything else (a second URL pasted below,
        // a stray line) would be parsed into the options and could be
        // quoted back in a message, password and all.
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PgError::Url {
                redacted: "<not shown>".to_owned(),
                reason: "it holds a space or a line break; the file must hold one URL on one \
                         line"
                    .to_owned(),
            });
        }
        let Some(prefix) = PREFIXES.iter().find(|p| url.starts_with(**p)) else {
            return Err(PgError::Url {
                redacted: "<not a postgres:// URL>".to_owned(),
                reason: "expected postgres://user:password@host:port/database?sslmode=require"
                    .to_owned(),
            });
        };
        let rest = &url[prefix.len()..];
        // tokio-postgres takes the credentials up to the first '@'; a second
        // one means an unencoded '@' in the user or password, and whatever
        // follows would be taken for a host name and printed.
        let (creds, after) = match rest.find('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (location, query) = match after.find('?') {
            Some(q) => (&after[..q], Some(&after[q + 1..])),
            None => (after, None),
        };
        if location.contains('@') {
            return Err(PgError::Url {
                redacted: "<unreadable>".to_owned(),
                reason: "the user or password contains an unencoded '@'; percent-encode it as %40"
                    .to_owned(),
            });
        }

        // sslmode and sslrootcert are linetokd's to interpret (tokio-postgres
        // knows no sslrootcert and would reject it); every other option is
        // passed through unchanged.
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded_key = decode(key)?;
            match decoded_key.as_str() {
                "sslmode" => sslmode = Some(decode(value)?),
                "sslrootcert" => sslrootcert = Some(decode(value)?),
                _ => kept.push(pair),
            }
        }
        let mut rebuilt = String::from(*prefix);
        if let Some(creds) = creds {
            rebuilt.push_str(creds);
            rebuilt.push('@');
        }
        rebuilt.push_str(location);
        if !kept.is_empty() {
            rebuilt.push('?');
            rebuilt.push_str(&kept.join("&"));
        }

        let mut config = tokio_postgres::Config::from_str(&rebuilt).map_err(|e| PgError::Url {
            redacted: "<unparsable>".to_owned(),
            reason: chain(&e),
        })?;
        let redacted = redact(&config);
        let bad = |reason: String| PgError::Url {
            redacted: redacted.clone(),
            reason,
        };
        if config.get_hosts().is_empty() {
            return Err(bad("it names no host".to_owned()));
        }
        let only_sockets = config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
        let roots = match sslrootcert.as_deref() {
            None | Some("system") => Roots::System,
            Some("") => return Err(bad("sslrootcert is empty".to_owned())),
            Some(path) => Roots::CaFile(PathBuf::from(path)),
        };
        let tls = match sslmode.as_deref() {
            None if only_sockets => TlsMode::Disable,
            None | Some("require" | "verify-full") => TlsMode::Require(roots),
            Some("disable") => TlsMode::Disable,
            Some(mode @ ("prefer" | "allow")) => {
                return Err(bad(format!(
                    "sslmode={mode} would fall back to an unencrypted connection without telling; \
                     use sslmode=require (TLS, verified) or sslmode=disable (plaintext)"
                )));
            }
            Some("verify-ca") => {
                return Err(bad(
                    "sslmode=verify-ca skips the host-name check, which linetokd always makes; \
                     use sslmode=require or verify-full"
                        .to_owned(),
                ));
            }
            // Not echoed: a malformed URL can carry more than the mode
            // (a second line pasted into the file, a fragment), and every
            // message about the URL may end up in logs and alerts.
            Some(_) => {
                return Err(bad(
                    "sslmode has an unknown value; use require, verify-full or disable".to_owned(),
                ));
            }
        };
        if only_sockets && matches!(tls, TlsMode::Require(_)) {
            return Err(bad(
                "TLS does not apply to a unix socket; use sslmode=disable with a socket host"
                    .to_owned(),
            ));
        }
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Require(_) => SslMode::Require,
        });
        Ok(Self {
            config,
            tls,
            redacted,
        })
    }

    /// The TLS mode the URL asked for.
    pub fn tls(&self) -> &TlsMode {
        &self.tls
    }

    /// `postgres://user@host:port/database`, never the password: for every
    /// message about this server.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The password's bytes, for scrubbing driver messages.
    fn password(&self) -> Option<&[u8]> {
        self.config.get_password()
    }
}

fn decode(s: &str) -> Result<String, PgError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| PgError::Url {
            redacted: "<unreadable>".to_owned(),
            reason: "an option is not valid percent-encoded UTF-8".to_owned(),
        })
}

fn redact(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = config.get_user().unwrap_or("");
    let at = if user.is_empty() { "" } else { "@" };
    let masked = if config.get_password().is_some() {
        ":***"
    } else {
        ""
    };
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{masked}{at}{}/{db}", hosts.join(","))
}

/// An error and its causes in one line ("a: b: c").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `text` with every occurrence of the password masked. No driver message
/// is known to quote the password; this keeps it that way if one ever does.
/// Passwords shorter than 4 bytes are not scrubbed: masking "ab" would
/// mangle every message and hide no real secret.
fn scrub(text: String, password: Option<&[u8]>) -> String {
    match password.and_then(|p| std::str::from_utf8(p).ok()) {
        Some(p) if p.len() >= 4 && text.contains(p) => text.replace(p, "***"),
        _ => text,
    }
}

/// Idle time before the first keepalive probe, the time between probes
/// and how many may go unanswered: a silent peer is found in about 40 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data may go unacknowledged before the connection is
/// dropped (Linux's `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-side bounds for every session: a statement may run 30 s, and a
/// transaction left open and idle (a client that died mid-way) is ended
/// after 60 s, so it cannot hold row locks for good.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000";

/// Sizes and timeouts of a [`PgPool`].
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Connections open at most.
    pub max_size: usize,
    /// How long opening one connection (TCP, TLS, authentication) may take;
    /// applies unless the URL sets `connect_timeout`.
    pub connect_timeout: Duration,
    /// How long [`PgPool::get`] waits for a free connection when all
    /// `max_size` are in use.
    pub wait_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 8,
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(30),
        }
    }
}

/// A pool of connections to one PostgreSQL database. Cheap to clone (an
/// `Arc` inside); every clone shares the connections.
#[derive(Clone)]
pub struct PgPool {
    pool: Pool,
    target: Arc<PgTarget>,
    options: PoolOptions,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("target", &self.target.redacted)
            .finish_non_exhaustive()
    }
}

impl PgPool {
    /// Builds the pool and opens one connection to prove the server is
    /// reachable and accepts the credentials, so a wrong URL fails at start
    /// with a message rather than at the first query.
    ///
    /// # Errors
    ///
    /// [`PgError::CaFile`] or [`PgError::SystemRoots`] when the trusted
    /// certificates cannot be loaded; [`PgError::Connect`] when the first
    /// connection fails (its `reason` has the server's message for a
    /// refused login).
    pub async fn connect(target: &PgTarget, options: &PoolOptions) -> Result<Self, PgError> {
        let pg_config = tuned(target, options);
        // tokio-postgres bounds each host's TCP connect; the pool bounds the
        // whole creation (every host tried, then TLS and authentication),
        // so one more connect timeout's worth is left for those.
        let per_host = pg_config
            .get_connect_timeout()
            .copied()
            .unwrap_or(options.connect_timeout);
        let hosts = u32::try_from(pg_config.get_hosts().len()).unwrap_or(u32::MAX);
        let create_timeout = per_host.saturating_mul(hosts.saturating_add(1));
        // Fast recycling checks at checkout only that the connection's task
        // still runs. A connection that broke unnoticed fails its next
        // query, which ends its task, so the checkout after that drops it.
        // Verified recycling would cost a round trip on every checkout.
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &target.tls {
            TlsMode::Disable => {
                Manager::from_config(pg_config, tokio_postgres::NoTls, manager_config)
            }
            TlsMode::Require(roots) => {
                Manager::from_config(pg_config, tls_connector(roots)?, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(create_timeout))
            .wait_timeout(Some(options.wait_timeout))
            .build()
            .map_err(|e| PgError::Connect {
                target: target.redacted.clone(),
                reason: format!("cannot build the connection pool: {e}"),
                driver: None,
            })?;
        let pool = Self {
            pool,
            target: Arc::new(target.clone()),
            options: options.clone(),
        };
        drop(pool.get().await?);
        Ok(pool)
    }

    /// A connection of its own, outside the pool, that `LISTEN`s on
    /// `channel` (a PostgreSQL notification channel name, an identifier)
    /// and hands each notification's payload to the receiver. The
    /// receiver closes when the connection ends (a dropped connection
    /// loses notifications: the caller polls as well, and listens again).
    /// The returned client must be kept for as long as the listening goes
    /// on; its connection's task runs on the caller's runtime.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`] when the connection cannot be opened,
    /// [`PgError::Query`] when `LISTEN` fails.
    pub async fn listen(
        &self,
        channel: &'static str,
    ) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<String>), PgError> {
        let config = tuned(&self.target, &self.options);
        let (tell, told) = tokio::sync::mpsc::channel(64);
        let connect_error = |e: tokio_postgres::Error| PgError::Connect {
            target: self.target.redacted.clone(),
            reason: format!("cannot open the notification connection: {e}"),
            driver: None,
        };
        let client = match &self.target.tls {
            TlsMode::Disable => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(connect_error)?;
                tokio::spawn(forward_notifications(connection, tell));
                client
            }
            TlsMode::Require(roots) => {
                let (client, connection) = config
                    .connect(tls_connector(roots)?)
                    .await
                    .map_err(connect_error)?;
                tokio::spawn(forward_notifications(connection, tell));
                client
            }
        };
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(self.query_error("listening for changes"))?;
        Ok((client, told))
    }
}

/// Drives a listening connection, forwarding every notification's payload
/// until the connection ends or nobody receives any more.
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tell: tokio::sync::mpsc::Sender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        match message {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                // A full queue means a refresh is pending anyway.
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                    tell.try_send(n.payload().to_owned())
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// `target`'s connection settings with the daemon's defaults filled in.
fn tuned(target: &PgTarget, options: &PoolOptions) -> tokio_postgres::Config {
    let mut pg_config = target.config.clone();
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(options.connect_timeout);
    }
    // A dead server or a dropped connection must be noticed in seconds,
    // not after TCP's two hours: the daemon's store work runs one job
    // at a time, and the writer lock lives on one idle connection.
    // Keepalives probe idle connections; the user timeout bounds how
    // long sent data may stay unacknowledged; the server bounds a
    // statement and a transaction left idle. A URL's own settings win.
    pg_config.keepalives(true);
    if pg_config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg_config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if pg_config.get_keepalives_interval().is_none() {
        pg_config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if pg_config.get_keepalives_retries().is_none() {
        pg_config.keepalives_retries(KEEPALIVE_RETRIES);
    }
    if pg_config.get_tcp_user_timeout().is_none() {
        pg_config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if pg_config.get_options().is_none() {
        pg_config.options(SESSION_OPTIONS);
    }
    pg_config
}

impl PgPool {
    /// A connection from the pool, opened when none is free.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`] when a new connection cannot be opened or none
    /// became free within the wait timeout.
    pub async fn get(&self) -> Result<Object, PgError> {
        self.pool.get().await.map_err(|e| self.pool_error(e))
    }

    /// The server, as every message names it (no password).
    pub fn target(&self) -> &str {
        &self.target.redacted
    }

    fn pool_error(&self, e: PoolError) -> PgError {
        let (reason, driver) = match e {
            PoolError::Backend(e) => (connect_reason(&e), Some(e)),
            PoolError::Timeout(kind) => (format!("timed out ({kind:?})"), None),
            other => (other.to_string(), None),
        };
        PgError::Connect {
            target: self.target.redacted.clone(),
            reason: scrub(reason, self.target.password()),
            driver,
        }
    }
}

/// What a failed connection attempt says: the server's own message for a
/// refused login (e.g. `password authentication failed for user "x"`,
/// with its SQLSTATE), the cause chain otherwise.
fn connect_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => chain(e),
    }
}

/// The rustls connector for `roots`, on the aws-lc-rs provider.
fn tls_connector(roots: &Roots) -> Result<MakeRustlsConnect, PgError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::CaFile(path) => {
            let ca_error = |reason: String| PgError::CaFile {
                path: path.clone(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("it holds no PEM certificate".to_owned()));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| ca_error(format!("a certificate is not usable: {e}")))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = match found.errors.first() {
                    Some(e) => e.to_string(),
                    None => "the system's store holds no usable certificate".to_owned(),
                };
                return Err(PgError::SystemRoots { reason });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::TlsSetup {
            reason: format!("the TLS provider refused the default protocol versions: {e}"),
        })?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(url: &str) -> String {
        match PgTarget::parse(url) {
            Ok(t) => panic!("{url} parsed: {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_redacted_form_names_user_host_port_and_database_but_never_the_password() {
        let t = PgTarget::parse("postgres://app:s3cr%40t-pw@db.example:6432/linetokd").unwrap();
        assert_eq!(t.redacted(), "postgres://app:***@db.example:6432/linetokd");
        assert_eq!(t.tls(), &TlsMode::Require(Roots::System));
        assert!(!format!("{t:?}").contains("s3cr"));
        assert_eq!(t.password(), Some(&b"s3cr@t-pw"[..]));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_and_other_options_passed_through() {
        let t = PgTarget::parse(
            "postgresql://app@[::1]:5433/db?application_name=lt&sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(
            t.tls(),
            &TlsMode::Require(Roots::CaFile(PathBuf::from("/etc/ca.pem")))
        );
        assert_eq!(t.config.get_application_name(), Some("lt"));
        assert_eq!(t.redacted(), "postgres://app@[::1]:5433/db");
        let t = PgTarget::parse("postgres://app@h/db?sslmode=disable&sslrootcert=/x").unwrap();
        assert_eq!(t.tls(), &TlsMode::Disable);
        let t = PgTarget::parse("postgres://h/db?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!(t.tls(), &TlsMode::Require(Roots::System));
    }

    #[test]
    fn a_unix_socket_defaults_to_no_tls_and_refuses_require() {
        let t = PgTarget::parse("postgres://app@/db?host=%2Frun%2Fpostgresql").unwrap();
        assert_eq!(t.tls(), &TlsMode::Disable);
        let e = parse_err("postgres://app@/db?host=%2Frun%2Fpostgresql&sslmode=require");
        assert!(e.contains("unix socket"), "{e}");
    }

    #[test]
    fn sslmodes_that_fall_back_or_skip_checks_are_refused_with_what_to_use() {
        for (mode, says) in [
            ("prefer", "fall back"),
            ("allow", "fall back"),
            ("verify-ca", "host-name"),
            ("bogus", "sslmode has an unknown value"),
        ] {
            let e = parse_err(&format!("postgres://app:pw1234@h/db?sslmode={mode}"));
            assert!(e.contains(says), "{mode}: {e}");
            assert!(e.contains("postgres://app:***@h:5432/db"), "{mode}: {e}");
            assert!(!e.contains("pw1234"), "{e}");
        }
    }

    #[test]
    fn malformed_urls_are_refused_without_quoting_the_password() {
        for url in [
            "mysql://app:hunter22@h/db",
            "postgres://app:hunt@er22@h/db",
            "postgres://app:hunter22@h/db?no_such_option=1",
            "postgres://app:hunter22@h:notaport/db",
            "postgres://app:hunter22@/db",
            // A second URL pasted below the first, or a stray line: the
            // tail must not be quoted back (as the sslmode's value, say).
            "postgres://app@h/db?sslmode=disable\npostgres://app:hunter22@h/db",
            "postgres://app@h/db?sslmode=hunter22",
            "postgres://app:hunter22@h/db ?sslmode=disable",
        ] {
            let e = parse_err(url);
            assert!(!e.contains("hunter22") && !e.contains("er22"), "{url}: {e}");
        }
        assert!(parse_err("mysql://x").contains("expected postgres://"));
        assert!(parse_err("postgres://a:b@c@h/db").contains("%40"));
        assert!(parse_err("postgres://h/db?no_such_option=1").contains("no_such_option"));
        assert!(parse_err("postgres://a@/db").contains("no host"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.pem");
        let e = tls_connector(&Roots::CaFile(path.clone())).err().unwrap();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = tls_connector(&Roots::CaFile(empty)).err().unwrap();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn driver_messages_are_scrubbed_of_the_password() {
        assert_eq!(
            scrub("bad hunter22 here".into(), Some(b"hunter22")),
            "bad *** here"
        );
        assert_eq!(scrub("a b".into(), Some(b"a")), "a b");
        assert_eq!(scrub("x".into(), None), "x");
    }
}
