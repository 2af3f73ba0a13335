//! A real Postgres server for the tests of getters that read one: `initdb` into a temp
//! directory and `pg_ctl start` on 127.0.0.1 (a free port, its socket in that directory, fsync
//! off), stopped when dropped. Postgres refuses to run as root, and CI runs as root: then the
//! server runs as the `postgres` user (Debian's `postgresql` package creates it;
//! tests/setup.sh installs the package where it is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server with a database `app`: `scores(name, score)` holding Tom 630, Jack 589 and
/// Sam 567, readable by the role `ro_user` (no password, SELECT on `scores` only), and
/// `secrets(s)`, which `ro_user` may not read.
#[derive(Debug)]
pub struct Postgres {
    /// Holds the data directory, the socket and the log.
    dir: tempfile::TempDir,
    /// The server's binaries (`initdb`, `pg_ctl`).
    bin: PathBuf,
    /// Where it listens on 127.0.0.1.
    pub port: u16,
    /// With TLS: its certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

/// The directory of the server's binaries: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|d| d.join("initdb").is_file());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "no Postgres server here (initdb not found): run `bash tests/setup.sh`, which \
             installs Debian's postgresql"
        )
    })
}

/// Whether this process runs as root (the owner of its own `/proc` entry).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl Postgres {
    /// Starts a server and loads the test data.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`], with TLS on (`ssl = on`) and a certificate for 127.0.0.1 that `ca`
    /// signed. Clients may still connect without TLS.
    pub fn start_tls(ca: &crate::pki::TestCa) -> Postgres {
        Postgres::start_with(Some(ca))
    }

    fn start_with(ca: Option<&crate::pki::TestCa>) -> Postgres {
        let bin = bindir();
        let dir = tempfile::tempdir().unwrap();
        let tls = ca.map(|ca| {
            let (crt, key) = ca.issue(dir.path(), "server", &["127.0.0.1"]);
            // Postgres takes a key only its owner may read.
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            (crt, key)
        });
        if is_root() {
            chown_to_postgres(dir.path());
            if let Some((crt, key)) = &tls {
                chown_to_postgres(crt);
                chown_to_postgres(key);
            }
        }
        let port = crate::free_port();
        let pg = Postgres {
            dir,
            bin,
            port,
            tls,
        };
        let data = pg.data();
        pg.server_command("initdb")
            .args(["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .run("initdb");
        pg.start_server();
        pg.psql("postgres", "CREATE DATABASE app");
        pg.psql("postgres", "CREATE ROLE ro_user LOGIN");
        pg.psql(
            "app",
            "CREATE TABLE scores (name TEXT PRIMARY KEY, score INTEGER NOT NULL);
             INSERT INTO scores VALUES ('Tom', 630), ('Jack', 589), ('Sam', 567);
             CREATE TABLE secrets (s TEXT);
             INSERT INTO secrets VALUES ('hidden');
             REVOKE ALL ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO ro_user;
             GRANT SELECT ON scores TO ro_user;",
        );
        pg
    }

    /// The URL a plugin is given: `ro_user` on database `app`.
    pub fn url(&self) -> String {
        format!("postgres://ro_user@127.0.0.1:{}/app", self.port)
    }

    /// Runs `sql` as the superuser on `db`; what it printed (rows only, unaligned).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-t",
                "-A",
                "-c",
                sql,
            ])
            .run("psql")
    }

    /// Stops the server at once (as a crash would).
    pub fn stop(&self) {
        self.server_command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .run("pg_ctl stop");
    }

    /// Starts it (again).
    pub fn start_server(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if let Some((crt, key)) = &self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                crt.display(),
                key.display()
            ));
        }
        self.server_command("pg_ctl")
            .args(["-D", &self.data(), "-o", &options, "-w", "-t", "30"])
            .args([
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "start",
            ])
            .run("pg_ctl start");
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A server program, run as `postgres` when this process is root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .server_command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

fn chown_to_postgres(path: &Path) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "running as root, and there is no `postgres` user to run the server as: run `bash \
         tests/setup.sh` (Debian's postgresql package creates it)"
    );
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    std::os::unix::fs::chown(path, Some(uid), None).unwrap();
}

/// Runs a command to its end, panicking with its output when it fails.
trait Run {
    /// What it printed on stdout.
    fn run(&mut self, what: &str) -> String;
}

impl Run for Command {
    fn run(&mut self, what: &str) -> String {
        let out = self.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
