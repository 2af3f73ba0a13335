//! The Go groupcache node (`tests/groupcache/main.go`), the peer system `geecache-perf http`
//! measures nodes against: [`binary`] builds it offline from Debian's `golang-go` and
//! `golang-github-golang-groupcache-dev` (GOPATH mode, no modules, no network) into
//! `target/groupcache/`, again only when the source is newer than the program there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

/// Where Debian's golang-*-dev packages put Go sources (a GOPATH).
pub const GOPATH: &str = "/usr/share/gocode";

/// What to install when Go or groupcache is missing.
pub const INSTALL: &str = "Debian: apt-get install golang-go golang-github-golang-groupcache-dev";

/// How long one `go build` may take (a cold one takes seconds).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The node's source.
pub fn source() -> PathBuf {
    repo_root().join("tests").join("groupcache").join("main.go")
}

/// The `go` program: on the PATH, or where Debian's golang-go puts it.
fn go_program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/lib/go/bin".into()])
        .map(|d| d.join("go"))
        .find(|p| p.is_file())
}

/// The built node program, built first if it is missing or older than [`source`]; `Ok(None)`
/// when Go or the groupcache sources are not installed (see [`INSTALL`]).
///
/// # Errors
/// `go build` fails or takes longer than five minutes (the message holds its output).
pub fn binary() -> Result<Option<PathBuf>, String> {
    let Some(go) = go_program() else {
        return Ok(None);
    };
    let gopath = Path::new(GOPATH);
    if !gopath
        .join("src/github.com/golang/groupcache/groupcache.go")
        .is_file()
    {
        return Ok(None);
    }
    let dir = repo_root().join("target").join("groupcache");
    let bin = dir.join("geecache-groupcache");
    let src = source();
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    // Tests of one binary call this from several threads at once: one builds, the others
    // wait for it and take its program.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let (Some(built), Some(written)) = (mtime(&bin), mtime(&src))
        && built >= written
    {
        return Ok(Some(bin));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Built beside, then renamed: a concurrent build or run never sees half a program.
    let partial = dir.join(format!(
        "geecache-groupcache.{}.partial",
        std::process::id()
    ));
    let log = dir.join(format!("build.{}.log", std::process::id()));
    let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(&go)
        .arg("build")
        .arg("-o")
        .arg(&partial)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOCACHE", dir.join("go-build"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", go.display()))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let outcome = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if !outcome.is_some_and(|s| s.success()) || !partial.is_file() {
        let _ = std::fs::remove_file(&partial);
        let how = outcome.map_or_else(
            || format!("still running after {BUILD_TIMEOUT:?}"),
            |s| s.to_string(),
        );
        return Err(format!(
            "go build of {} failed ({how}):\n{output}",
            src.display()
        ));
    }
    std::fs::rename(&partial, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(Some(bin))
}
