//! `geecache`, the command-line client of a geecache cluster: one command per route of
//! docs/api.md, sent to the first node of `--url` that can be reached.
//!
//! - [`args`]: the commands and global options (clap, each option with its `GEECACHE_…`
//!   variable: the tokens are read from the same variables as the node's).
//! - [`nodes`]: the HTTP client and the node list; a node that cannot be reached is passed
//!   over for the next, a node that answered is never asked again by the same command.
//! - [`run`]: a command becomes a request; its answer is printed as plain text (values as
//!   they are, documents as indented JSON) or, with `--json`, as one JSON line.
//!
//! This crate does not link the node: it speaks HTTP only, so it builds in seconds.

pub mod args;
pub mod nodes;

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

use base64::Engine as _;
use clap::Parser as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::{Value, json};

use args::{Args, Command};
use nodes::{Failure, Nodes, Request};

/// What a key may hold as a path segment: everything but RFC 3986's unreserved characters is
/// percent-encoded (a `/` in a key is `%2F`, as the node reads it).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Exit status when a node answered an error.
const EXIT_ANSWERED: u8 = 1;
/// Exit status when no node could be reached.
const EXIT_UNREACHABLE: u8 = 3;

/// Parses the command line, runs the command, prints its answer; the exit status says how it
/// went (see [`Args`]).
pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args, &mut std::io::stdout().lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_ANSWERED),
        Err(failure) => {
            eprintln!("geecache: {}", describe(&failure));
            ExitCode::from(match failure {
                Failure::Unreachable(_) => EXIT_UNREACHABLE,
                _ => EXIT_ANSWERED,
            })
        }
    }
}

/// One line saying what went wrong.
fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Answered {
            url,
            status,
            code,
            message,
        } => format!("{url} answered {status} {code}: {message}"),
        Failure::Unreachable(reasons) => {
            let each: Vec<String> = reasons.iter().map(|(u, r)| format!("{u}: {r}")).collect();
            format!("no node could be reached ({})", each.join("; "))
        }
        Failure::Other(message) => message.clone(),
    }
}

/// Runs `args.command`, writing its answer to `out`. `Ok(false)`: done, but some part failed
/// (a batch key with an error).
///
/// # Errors
/// What [`Nodes::send`] returns, and local failures (an unreadable file, standard input).
pub fn run(args: &Args, out: &mut dyn std::io::Write) -> Result<bool, Failure> {
    let ca = match &args.ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| Failure::Other(format!("--ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let nodes = Nodes::new(&args.urls, ca.as_deref(), args.timeout)?;
    let group = utf8_percent_encode(&args.group, SEGMENT).to_string();
    let key_path = |key: &str| {
        format!(
            "/api/v1/groups/{group}/keys/{}",
            utf8_percent_encode(key, SEGMENT)
        )
    };
    let api = args.api_token.as_deref();
    let admin = args.admin_token.as_deref();
    let written = |e: std::io::Error| Failure::Other(format!("writing the answer: {e}"));
    match &args.command {
        Command::Get { key } => {
            let (_, response) = nodes.send(&Request {
                method: Method::GET,
                path: key_path(key),
                body: None,
                token: api,
            })?;
            let value = read_bytes(response)?;
            if args.json {
                writeln!(out, "{}", value_json(key, &value)).map_err(written)?;
            } else {
                out.write_all(&value).map_err(written)?;
                writeln!(out).map_err(written)?;
            }
            Ok(true)
        }
        Command::Set { key, value, ttl } => {
            let body = match value {
                Some(v) => v.clone().into_bytes(),
                None => read_stdin()?,
            };
            let query = ttl
                .as_ref()
                .map(|t| format!("?ttl={}", utf8_percent_encode(t, SEGMENT)))
                .unwrap_or_default();
            nodes.send(&Request {
                method: Method::PUT,
                path: format!("{}{query}", key_path(key)),
                body: Some((body, "application/octet-stream")),
                token: api,
            })?;
            done(out, args.json, &json!({ "key": key, "set": true })).map_err(written)?;
            Ok(true)
        }
        Command::Del { key } => {
            nodes.send(&Request {
                method: Method::DELETE,
                path: key_path(key),
                body: None,
                token: api,
            })?;
            done(out, args.json, &json!({ "key": key, "deleted": true })).map_err(written)?;
            Ok(true)
        }
        Command::Batch { keys } => {
            let keys = if keys.is_empty() {
                String::from_utf8_lossy(&read_stdin()?)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            } else {
                keys.clone()
            };
            let body = serde_json::to_vec(&json!({ "keys": keys }))
                .map_err(|e| Failure::Other(e.to_string()))?;
            let (url, response) = nodes.send(&Request {
                method: Method::POST,
                path: format!("/api/v1/groups/{group}/batch"),
                body: Some((body, "application/json")),
                token: api,
            })?;
            let answer = read_json(&url, response)?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            let all_found = results.iter().all(|r| r.get("error").is_none());
            if args.json {
                writeln!(out, "{answer}").map_err(written)?;
            } else {
                for r in &results {
                    writeln!(out, "{}", batch_line(r)).map_err(written)?;
                }
            }
            Ok(all_found)
        }
        Command::Stats => document(&nodes, out, args.json, "/api/v1/stats".into(), api, None),
        Command::Cluster => {
            let (url, response) = nodes.send(&Request {
                method: Method::GET,
                path: "/api/v1/cluster".into(),
                body: None,
                token: api,
            })?;
            let answer = read_json(&url, response)?;
            if args.json {
                writeln!(out, "{answer}").map_err(written)?;
            } else {
                write!(out, "{}", cluster_text(&answer)).map_err(written)?;
            }
            Ok(true)
        }
        Command::Flush { cluster } => {
            let query = if *cluster { "?cluster=true" } else { "" };
            let path = format!("/api/v1/groups/{group}/flush{query}");
            document(&nodes, out, args.json, path, admin, Some(Vec::new()))
        }
        Command::Reload {
            plugin,
            upload,
            path,
            flush,
            cluster,
        } => {
            let mut query = Vec::new();
            if let Some(p) = path {
                query.push(format!("path={}", utf8_percent_encode(p, SEGMENT)));
            }
            if *flush {
                query.push("flush=true".into());
            }
            if *cluster {
                query.push("cluster=true".into());
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            let route = format!(
                "/api/v1/plugins/{}/reload{query}",
                utf8_percent_encode(plugin, SEGMENT)
            );
            let body = match upload {
                Some(file) => Some(
                    std::fs::read(file)
                        .map_err(|e| Failure::Other(format!("--upload {}: {e}", file.display())))?,
                ),
                None => Some(Vec::new()),
            };
            document(&nodes, out, args.json, route, admin, body)
        }
    }
}

/// Sends a GET (or, with a `body`, a POST: an empty one, or a component) whose answer is a
/// JSON document, and prints it indented (plain) or on one line (`json`).
fn document(
    nodes: &Nodes,
    out: &mut dyn std::io::Write,
    json: bool,
    path: String,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<bool, Failure> {
    let (method, body) = match body {
        None => (Method::GET, None),
        Some(b) if b.is_empty() => (Method::POST, None),
        Some(b) => (Method::POST, Some((b, "application/wasm"))),
    };
    let (url, response) = nodes.send(&Request {
        method,
        path,
        body,
        token,
    })?;
    let answer = read_json(&url, response)?;
    done(out, json, &answer).map_err(|e| Failure::Other(format!("writing the answer: {e}")))?;
    Ok(true)
}

/// Prints a document: indented, or on one line with `json`. For a write's confirmation, plain
/// output is `OK` (as `redis-cli` says it).
fn done(out: &mut dyn std::io::Write, json: bool, answer: &Value) -> std::io::Result<()> {
    if json {
        writeln!(out, "{answer}")
    } else if answer.get("set").is_some() || answer.get("deleted").is_some() {
        writeln!(out, "OK")
    } else {
        let text = serde_json::to_string_pretty(answer).unwrap_or_else(|_| answer.to_string());
        writeln!(out, "{text}")
    }
}

/// A value as JSON: `value` when it is UTF-8, else `value_base64` (as the batch route does).
fn value_json(key: &str, value: &[u8]) -> Value {
    match std::str::from_utf8(value) {
        Ok(text) => json!({ "key": key, "value": text }),
        Err(_) => json!({
            "key": key,
            "value_base64": base64::engine::general_purpose::STANDARD.encode(value),
        }),
    }
}

/// One result of a batch as a plain line: `KEY<TAB>VALUE`, or `KEY<TAB>error CODE: MESSAGE`.
fn batch_line(result: &Value) -> String {
    let key = result["key"].as_str().unwrap_or_default();
    if let Some(error) = result.get("error") {
        let code = error["code"].as_str().unwrap_or("error");
        let message = error["message"].as_str().unwrap_or_default();
        format!("{key}\terror {code}: {message}")
    } else if let Some(value) = result["value"].as_str() {
        format!("{key}\t{value}")
    } else {
        let encoded = result["value_base64"].as_str().unwrap_or_default();
        format!("{key}\tbase64:{encoded}")
    }
}

/// `GET /api/v1/cluster` as lines: this node and its state, then each member.
fn cluster_text(answer: &Value) -> String {
    let mut text = format!(
        "self {} ({})\n",
        answer["self"].as_str().unwrap_or("?"),
        answer["registration"].as_str().unwrap_or("?")
    );
    for member in answer["members"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "member {} {}\n",
            member["id"].as_str().unwrap_or("?"),
            member["addr"].as_str().unwrap_or("?")
        ));
    }
    text
}

/// A successful answer's body.
fn read_bytes(response: reqwest::blocking::Response) -> Result<Vec<u8>, Failure> {
    let url = response.url().to_string();
    response
        .bytes()
        .map(|b| b.to_vec())
        .map_err(|e| Failure::Other(format!("{url}: the answer broke off: {e}")))
}

/// A successful answer's body as JSON.
fn read_json(url: &str, response: reqwest::blocking::Response) -> Result<Value, Failure> {
    let body = read_bytes(response)?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure::Other(format!(
            "{url}: the answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        ))
    })
}

/// All of standard input (a value for `set`, keys for `batch`); refused when it is a
/// terminal, so that a forgotten argument does not wait for input nobody types.
fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::Other(
            "nothing to send: give it as an argument, or pipe it to standard input".into(),
        ));
    }
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Other(format!("reading standard input: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_path_segment() {
        assert_eq!(
            utf8_percent_encode("a/b c", SEGMENT).to_string(),
            "a%2Fb%20c"
        );
        assert_eq!(
            utf8_percent_encode("Tom-1.x_~", SEGMENT).to_string(),
            "Tom-1.x_~"
        );
    }

    #[test]
    fn values_that_are_not_utf8_go_out_as_base64() {
        assert_eq!(value_json("k", b"630"), json!({"key": "k", "value": "630"}));
        assert_eq!(
            value_json("k", &[0xff, 0x00]),
            json!({"key": "k", "value_base64": "/wA="})
        );
    }

    #[test]
    fn a_batch_line_names_the_error_code() {
        let line = batch_line(
            &json!({"key": "x", "error": {"code": "key_not_found", "message": "no such key"}}),
        );
        assert_eq!(line, "x\terror key_not_found: no such key");
        assert_eq!(
            batch_line(&json!({"key": "Tom", "value": "630"})),
            "Tom\t630"
        );
    }
}
