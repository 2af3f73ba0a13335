//! The node's text logs: in colour on a terminal, plain in a file, plain with `NO_COLOR` set.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use geecache_tests::{db_getter_node, demo_db, free_port, log_tail};

/// A new pseudo-terminal: its controlling side and the terminal a program writes to. Both are
/// opened close-on-exec (std always asks for it), so a program another test starts meanwhile
/// in this process inherits neither: the terminal closes when the node writing to it exits.
#[allow(unsafe_code)]
fn pseudo_terminal() -> (File, File) {
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let controller = open(Path::new("/dev/ptmx"));
    let fd = controller.as_raw_fd();
    let mut name = [0u8; 128];
    // SAFETY: `fd` is an open /dev/ptmx; ptsname_r writes at most `name.len()` bytes to `name`.
    let done = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr().cast(), name.len()) == 0
    };
    assert!(done, "/dev/ptmx: {}", std::io::Error::last_os_error());
    let name = std::ffi::CStr::from_bytes_until_nul(&name).unwrap();
    let terminal = open(Path::new(name.to_str().unwrap()));
    (controller, terminal)
}

/// Starts a db_getter node on `db`, its stderr on a pseudo-terminal when `on_a_terminal`
/// (else in a file in `dir`), with `NO_COLOR=1` when `no_color`; waits until it has logged
/// its start, then kills it and returns what it wrote.
fn node_log(dir: &Path, db: &Path, on_a_terminal: bool, no_color: bool) -> String {
    let mut node = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), free_port(), db);
    node.env_remove("NO_COLOR").env("RUST_LOG", "info");
    if no_color {
        node.env("NO_COLOR", "1");
    }
    let written = Arc::new(Mutex::new(String::new()));
    let log = dir.join(format!("node-{no_color}.log"));
    let mut child = if on_a_terminal {
        let (mut controller, terminal) = pseudo_terminal();
        let child = node.stdout(Stdio::null()).stderr(terminal).spawn().unwrap();
        // `node` keeps no copy of the terminal: it closes when the node exits, which ends
        // this reader (EIO).
        drop(node);
        let written = Arc::clone(&written);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = controller.read(&mut buf) {
                if n == 0 {
                    break;
                }
                written
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        child
    } else {
        let file = File::create(&log).unwrap();
        node.stdout(Stdio::null()).stderr(file).spawn().unwrap()
    };
    let read = || {
        if on_a_terminal {
            written.lock().unwrap().clone()
        } else {
            std::fs::read_to_string(&log).unwrap_or_default()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read().contains("listening") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert!(
        text.contains("listening"),
        "no start logged:\n{}",
        log_tail(&text)
    );
    text
}

#[test]
fn logs_are_coloured_on_a_terminal_only_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let escape = "\x1b[";
    let in_a_file = node_log(dir.path(), &db, false, false);
    assert!(
        !in_a_file.contains(escape),
        "colour in a file:\n{in_a_file}"
    );
    let on_a_terminal = node_log(dir.path(), &db, true, false);
    assert!(
        on_a_terminal.contains(escape),
        "no colour on a terminal:\n{on_a_terminal}"
    );
    let no_color = node_log(dir.path(), &db, true, true);
    assert!(
        !no_color.contains(escape),
        "colour with NO_COLOR:\n{no_color}"
    );
}
