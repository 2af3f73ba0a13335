//! The node's text logs: in colour on a terminal, plain in a file, plain with `NO_COLOR` set.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use geecache_tests::{db_getter_node, demo_db, free_port, log_tail};

/// Starts a db_getter node on `db` (on a pseudo-terminal when `through_a_terminal`, with
/// `NO_COLOR=1` when `no_color`), its output into a file in `dir`; waits until it has logged
/// its start, then stops it and returns what it wrote.
fn node_log(dir: &Path, db: &Path, through_a_terminal: bool, no_color: bool) -> String {
    let node = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), free_port(), db);
    let mut command = if through_a_terminal {
        // util-linux's `script` runs the command on a new pseudo-terminal, copying its output.
        let line: Vec<String> = std::iter::once(node.get_program())
            .chain(node.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect();
        let mut script = Command::new("script");
        script.args([
            "-q",
            "-e",
            "-c",
            &format!("exec {}", line.join(" ")),
            "/dev/null",
        ]);
        script
    } else {
        node
    };
    command.env_remove("NO_COLOR").env("RUST_LOG", "info");
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let log = dir.join(format!("node-{through_a_terminal}-{no_color}.log"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        if text.contains("listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
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
