//! A throwaway PostgreSQL 15 cluster for the PostgreSQL store's tests (the
//! store's unit tests and `tests/it`).
//!
//! One cluster per test process ([`test_db`] starts it on first use, in a
//! `OnceLock`), and a fresh database per test (`CREATE DATABASE` with a
//! unique name), so tests stay fast and independent.
//!
//! # What it needs
//!
//! PostgreSQL 15's server binaries (`initdb`, `pg_ctl`, `postgres`) in
//! `/usr/lib/postgresql/15/bin` (or the directory `LINETOKD_PG_BINDIR`
//! names), and `openssl` for the TLS tests. `initdb` refuses to run as root,
//! so when the tests run as root every server command runs as the
//! `postgres` OS user (`Command::uid`/`gid`; std drops the supplementary
//! groups), in a temp dir that user creates and owns. The cluster listens
//! on 127.0.0.1 at a port found free by binding port 0 and releasing it
//! (PostgreSQL cannot take port 0; a start that loses the port to another
//! process is retried on a new one) and on a unix socket in its own dir.
//! Authentication is `trust` for everyone except members of
//! [`PASSWORD_ROLE_GROUP`], who need their password (scram-sha-256), so the
//! tests can try a wrong one. TLS is on with a CA made for this cluster when
//! `openssl` is there ([`Cluster::ca_file`]).
//!
//! When the binaries are missing or the cluster cannot start, each test
//! prints one line saying why and returns, unless
//! `LINETOKD_REQUIRE_POSTGRES=1` (set by `.ci/run`), which makes it fail.
//!
//! # Teardown
//!
//! The server is started by a small watchdog shell, in its own process
//! group (so a Ctrl-C does not kill it half-way), that waits for its stdin
//! to reach end-of-file, then runs `pg_ctl stop -m immediate` and removes
//! the cluster's dir. The test process holds the only write end of that
//! pipe, so the cluster goes away when the process ends however it ends
//! (tests pass, a test panics, the process is killed), and statics need no
//! destructor. [`Cluster`]'s `Drop` closes the pipe and waits for the
//! watchdog, for clusters not kept in the static.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The variable that turns a skip into a failure.
pub const REQUIRE_VAR: &str = "LINETOKD_REQUIRE_POSTGRES";
/// The superuser the cluster is created with (trust authentication).
pub const ADMIN: &str = "lt_admin";
/// Members of this role must give their password.
pub const PASSWORD_ROLE_GROUP: &str = "lt_password_login";
/// A login role that needs a password, and its password.
pub const PASSWORD_USER: &str = "lt_pw";
/// [`PASSWORD_USER`]'s password.
pub const PASSWORD: &str = "correct-horse-battery-staple";

const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
const START_ATTEMPTS: usize = 5;

/// The watchdog: start the server, say so, wait for EOF on stdin, stop the
/// server, remove its dir. Interrupts are ignored so only EOF ends it.
const WATCHDOG: &str = r#"
trap '' INT HUP TERM
pg_ctl="$1"; data="$2"; port="$3"; base="$4"
if ! "$pg_ctl" -D "$data" -l "$base/postgres.log" -o "-p $port" -w -t 60 start \
     >"$base/pg_ctl.out" 2>&1; then
  echo failed
  exit 1
fi
echo ready
cat >/dev/null
"$pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
rm -rf "$base"
"#;

/// A running cluster.
pub struct Cluster {
    /// The loopback port.
    pub port: u16,
    /// The cluster's dir (data, socket, log, certificates).
    pub base: PathBuf,
    /// The CA certificate (PEM) that signed the server's certificate, when
    /// TLS is on.
    ca_file: Option<PathBuf>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// Who runs the server commands: the `postgres` OS user when we are root.
#[derive(Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

impl RunAs {
    fn find() -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Ok(Self(None));
        }
        let passwd = fs::read_to_string("/etc/passwd")
            .map_err(|e| format!("running as root and cannot read /etc/passwd: {e}"))?;
        let ids = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == "postgres")
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .ok_or("running as root (initdb refuses root) and there is no `postgres` OS user")?;
        Ok(Self(Some(ids)))
    }

    fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some((uid, gid)) = self.0 {
            cmd.uid(uid).gid(gid);
        }
        // The user may not be able to enter the test's working directory.
        cmd.current_dir("/");
        cmd
    }
}

fn run(what: &str, mut cmd: Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Cluster {
    /// Creates and starts a cluster in a new temp dir.
    ///
    /// # Errors
    ///
    /// Why it could not: binaries missing, `initdb` failed, no port taken
    /// after a few attempts (the server's log tail included).
    pub fn start() -> Result<Self, String> {
        let bindir = std::env::var_os("LINETOKD_PG_BINDIR")
            .map_or_else(|| PathBuf::from(DEFAULT_BINDIR), PathBuf::from);
        Self::start_with(&bindir)
    }

    /// [`Self::start`] with the server binaries in `bindir`.
    ///
    /// # Errors
    ///
    /// As [`Self::start`].
    pub fn start_with(bindir: &Path) -> Result<Self, String> {
        for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
            if !bindir.join(tool).is_file() {
                return Err(format!(
                    "{} not found (install PostgreSQL 15: apt-get install postgresql, \
                     or set LINETOKD_PG_BINDIR)",
                    bindir.join(tool).display()
                ));
            }
        }
        let run_as = RunAs::find()?;
        let mut mktemp = run_as.command("mktemp");
        mktemp
            .arg("-d")
            .arg(std::env::temp_dir().join("linetokd-pg.XXXXXX"));
        let base = PathBuf::from(
            String::from_utf8_lossy(&run("mktemp", mktemp)?.stdout)
                .trim()
                .to_owned(),
        );
        match Self::start_in(bindir, run_as, &base) {
            Ok(cluster) => Ok(cluster),
            Err(e) => {
                let _ = fs::remove_dir_all(&base);
                Err(e)
            }
        }
    }

    fn start_in(bindir: &Path, run_as: RunAs, base: &Path) -> Result<Self, String> {
        let data = base.join("data");
        let mut initdb = run_as.command(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", ADMIN, "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"]);
        run("initdb", initdb)?;

        let ca_file = make_certificates(run_as, base).ok();
        let mut conf = format!(
            "\n# linetokd test cluster\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 200\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\n",
            base.display()
        );
        if ca_file.is_some() {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                base.display()
            ));
        }
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| format!("cannot write postgresql.conf: {e}"))?;
        fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 host all +{PASSWORD_ROLE_GROUP} 127.0.0.1/32 scram-sha-256\n\
                 host all all 127.0.0.1/32 trust\n"
            ),
        )
        .map_err(|e| format!("cannot write pg_hba.conf: {e}"))?;

        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match spawn_watchdog(bindir, run_as, base, &data, port)? {
                Some(watchdog) => {
                    let cluster = Self {
                        port,
                        base: base.to_owned(),
                        ca_file,
                        watchdog: Mutex::new(Some(watchdog)),
                    };
                    cluster.create_roles(bindir)?;
                    return Ok(cluster);
                }
                None => {
                    last = fs::read_to_string(base.join("postgres.log")).unwrap_or_default();
                    // Another process took the port between our probe and
                    // the server's bind: try another. Anything else is final.
                    if !last.contains("could not bind") && !last.contains("Address already in use")
                    {
                        break;
                    }
                }
            }
        }
        let tail: Vec<&str> = last.lines().rev().take(8).collect();
        Err(format!(
            "the PostgreSQL server did not start: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }

    fn create_roles(&self, bindir: &Path) -> Result<(), String> {
        let mut psql = Command::new(bindir.join("psql"));
        psql.arg("-h")
            .arg(&self.base)
            .args(["-p", &self.port.to_string(), "-U", ADMIN, "-d", "postgres"])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!(
                "CREATE ROLE {PASSWORD_ROLE_GROUP} NOLOGIN; \
                 CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}' IN ROLE {PASSWORD_ROLE_GROUP};"
            ));
        run("psql (creating the test roles)", psql).map(|_| ())
    }

    /// The CA certificate that signed the server's, when TLS is on.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// A URL for `database` as the trusted superuser, plaintext.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{ADMIN}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Stops the server and removes its dir now (what the end of the
    /// process does for the shared cluster).
    pub fn stop(&self) {
        let taken = self
            .watchdog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the watchdog on `port`; `None` when the server did not start.
fn spawn_watchdog(
    bindir: &Path,
    run_as: RunAs,
    base: &Path,
    data: &Path,
    port: u16,
) -> Result<Option<(Child, ChildStdin)>, String> {
    let mut cmd = run_as.command("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(bindir.join("pg_ctl"))
        .arg(data)
        .arg(port.to_string())
        .arg(base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the watchdog shell: {e}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the watchdog shell has no pipes".to_owned());
    };
    let mut line = String::new();
    // pg_ctl -w waits until the server accepts connections (or fails), so
    // this read is the wait: no polling, no sleep.
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the watchdog: {e}"))?;
    if line.trim() == "ready" {
        Ok(Some((child, stdin)))
    } else {
        drop(stdin);
        let _ = child.wait();
        Ok(None)
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with
/// `openssl` as the server's user (the key must be its own, mode 0600).
fn make_certificates(run_as: RunAs, base: &Path) -> Result<PathBuf, String> {
    let b = base.display();
    let script = format!(
        "set -e; umask 077; cd '{b}'
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
           -subj /CN=linetokd-test-ca -addext basicConstraints=critical,CA:TRUE \
           -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.crt
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
           -subj /CN=localhost -keyout server.key -out server.csr
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
           -extfile ext.cnf -out server.crt
         chmod 644 ca.crt"
    );
    let mut sh = run_as.command("sh");
    sh.arg("-c").arg(script);
    run("openssl (making the test certificates)", sh)?;
    Ok(base.join("ca.crt"))
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The shared cluster, started on first use; `Err` says why there is none.
pub fn cluster() -> Result<&'static Cluster, &'static str> {
    CLUSTER
        .get_or_init(Cluster::start)
        .as_ref()
        .map_err(String::as_str)
}

/// Skips (one printed line) or, with `LINETOKD_REQUIRE_POSTGRES=1`, fails.
pub fn skip(test: &str, why: &str) {
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{test}: PostgreSQL is required ({REQUIRE_VAR}=1) but unavailable: {why}");
    }
    println!("skipping {test}: PostgreSQL unavailable: {why}");
}

/// A fresh database in the shared cluster.
pub struct TestDb {
    /// The cluster it lives in.
    pub cluster: &'static Cluster,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// A URL for this database as the trusted superuser, plaintext.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// A plain tokio-postgres client as the superuser (its connection is
    /// driven by a spawned task).
    pub async fn client(&self) -> tokio_postgres::Client {
        connect_plain(&self.url()).await
    }
}

async fn connect_plain(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e:?}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// [`test_db`] for a synchronous test: `None` (after the skip line) when
/// there is no PostgreSQL.
pub fn test_db_blocking(test: &str) -> Option<TestDb> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a runtime for creating {test}'s database: {e}"))
        .block_on(test_db(test))
}

/// A new, empty database for `test`, or `None` (after the skip line) when
/// there is no PostgreSQL. Databases are left to the cluster's teardown.
pub async fn test_db(test: &str) -> Option<TestDb> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = match cluster() {
        Ok(c) => c,
        Err(why) => {
            skip(test, why);
            return None;
        }
    };
    let mut name: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    name = format!("t{}_{name}", NEXT.fetch_add(1, Ordering::Relaxed));
    let admin = connect_plain(&cluster.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e:?}"));
    Some(TestDb { cluster, name })
}
