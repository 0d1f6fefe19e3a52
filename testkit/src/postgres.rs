//! A real PostgreSQL for tests and benchmarks, on a free loopback port.
//!
//! [`PostgresServer::start`] runs Debian's `initdb` into a temporary folder
//! and starts `postgres -D … -p … -k …` listening on 127.0.0.1 only, with a
//! `pricing` database, trust authentication for the `pricing` role, and no
//! fsync (a test's data need not survive the machine, only the server). As
//! root (CI), PostgreSQL refuses to run, so both run as an unprivileged
//! user through `setpriv`, which execs in place: the child is the
//! postmaster itself, stopped by its PID. The user is `PG_TEST_USER`, by
//! default `postgres`, which Debian's `postgresql` package creates.
//!
//! The binaries come from `PG_BIN_DIR`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions as _, Connection as _};
use tempfile::TempDir;

use super::free_port;

/// The role and database every test server has.
const USER: &str = "pricing";

/// The database the tests use.
const DATABASE: &str = "pricing";

/// How long a started server may take to accept a login.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Who runs the server: this process's user, or, as root, an unprivileged one.
#[derive(Debug, Clone)]
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
}

/// Options for a test PostgreSQL.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Serve TLS with this certificate and private key (PEM), besides
    /// plain connections (`ssl=on`; `pg_hba` allows both).
    pub tls: Option<(String, String)>,
}

/// A real PostgreSQL server on a free loopback port, killed when dropped.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    bin: PathBuf,
    run_as: Option<RunAs>,
    tls: bool,
}

impl PostgresServer {
    /// Initialises a fresh cluster and starts it, with a `pricing` database.
    pub async fn start() -> Self {
        Self::start_with(PostgresOptions::default()).await
    }

    /// [`Self::start`] with `options`.
    pub async fn start_with(options: PostgresOptions) -> Self {
        let bin = bin_dir();
        let run_as = run_as();
        let dir = tempfile::tempdir().expect("temporary folder for postgres");
        if let Some(r) = &run_as {
            std::os::unix::fs::chown(dir.path(), Some(r.uid), Some(r.gid))
                .expect("hand the temporary folder to the postgres user");
        }
        let data = dir.path().join("data");
        let status = as_user(&run_as, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C", "-N"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("run initdb (apt-get install postgresql)");
        assert!(status.success(), "initdb failed: {status}");
        if let Some((cert, key)) = &options.tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write the server's TLS files");
                // PostgreSQL refuses a key others can read.
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the TLS files");
                if let Some(r) = &run_as {
                    std::os::unix::fs::chown(&path, Some(r.uid), Some(r.gid))
                        .expect("hand the TLS files to the postgres user");
                }
            }
        }
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            bin,
            run_as,
            tls: options.tls.is_some(),
        };
        for _ in 0..20 {
            server.port = free_port();
            if let Some(child) = server.spawn_and_wait().await {
                server.child = Some(child);
                server.create_database(DATABASE).await;
                return server;
            }
        }
        panic!("could not start postgres on a free port after 20 attempts");
    }

    /// The URL of the `pricing` database, e.g. `postgres://pricing@127.0.0.1:40123/pricing`.
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The URL of another database on this server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database, for a test that wants one of its own on a
    /// shared server. Returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database names here are plain identifiers"
        );
        let admin = format!("{}?sslmode=disable", self.url_of("postgres"))
            .parse::<sqlx::postgres::PgConnectOptions>()
            .expect("admin url");
        let mut conn = admin.connect().await.expect("connect to the test server");
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        self.url_of(name)
    }

    /// Stops the server at once, as a crash would look to its clients:
    /// an immediate shutdown (SIGQUIT to the postmaster, by PID), which
    /// drops every connection without a checkpoint.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "QUIT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data (after crash
    /// recovery, every committed transaction is there).
    pub async fn restart(&mut self) {
        self.stop();
        self.child = self.spawn_and_wait().await;
        assert!(
            self.child.is_some(),
            "postgres did not come back on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the postmaster on `self.port` and waits until it accepts a
    /// login; `None` if it exited (most likely: the port was taken).
    async fn spawn_and_wait(&self) -> Option<Child> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("postgres log file");
        if let Some(r) = &self.run_as {
            std::os::unix::fs::chown(self.log_path(), Some(r.uid), Some(r.gid))
                .expect("hand the log to the postgres user");
        }
        let mut child = as_user(&self.run_as, &self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .args(if self.tls {
                &["-c", "ssl=on"][..]
            } else {
                &[][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgres (apt-get install postgresql)");
        let admin = format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            // Plain TCP even with TLS on: readiness, not the client's path.
            if let Ok(conn) = sqlx::PgConnection::connect(&format!("{admin}?sslmode=disable")).await
            {
                let _ = conn.close().await;
                return Some(child);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        signal(&child, "QUIT");
        let _ = child.wait();
        None
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `SIGNAL` to `child` by its PID.
fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `program` as a command run by `run_as` (through `setpriv`, which execs
/// it in place), or by this process's own user.
fn as_user(run_as: &Option<RunAs>, program: &Path) -> Command {
    match run_as {
        None => Command::new(program),
        Some(r) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", r.uid))
                .arg(format!("--regid={}", r.gid))
                .arg("--init-groups")
                .arg(program)
                .env("HOME", "/tmp")
                .env("USER", &r.user);
            cmd
        }
    }
}

/// `None` when this process may run PostgreSQL itself; as root, the
/// unprivileged user `PG_TEST_USER` (default `postgres`).
fn run_as() -> Option<RunAs> {
    if id(&["-u"]) != Some(0) {
        return None;
    }
    let user = std::env::var("PG_TEST_USER").unwrap_or_else(|_| "postgres".into());
    let (Some(uid), Some(gid)) = (id(&["-u", &user]), id(&["-g", &user])) else {
        panic!(
            "PostgreSQL refuses to run as root and there is no user {user:?} to run it as: \
             apt-get install postgresql (which creates `postgres`), or set PG_TEST_USER"
        );
    };
    Some(RunAs { user, uid, gid })
}

/// What `id ARGS` prints, as a number.
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Where `initdb` and `postgres` are.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        // On PATH: Command resolves a bare name.
        None => PathBuf::new(),
    }
}
