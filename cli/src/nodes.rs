//! The nodes a command may go to and the one HTTP client that asks them.

use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Client, Response};

/// Why a command could not be done.
#[derive(Debug)]
pub enum Failure {
    /// A node answered with an error status: `{"error": {"code", "message"}}` as it sent them.
    Answered {
        /// The node that answered.
        url: String,
        /// Its HTTP status.
        status: u16,
        /// The error's stable code (docs/api.md), or `http_<status>` for a body that is not
        /// the node's JSON error.
        code: String,
        /// Its message.
        message: String,
    },
    /// No node of --url could be reached: each one's reason.
    Unreachable(Vec<(String, String)>),
    /// Anything else (a local file, an answer that is not what the route promises).
    Other(String),
}

/// A request to send: method, path (with its query) and, for writes, a body.
#[derive(Debug)]
pub struct Request<'a> {
    /// GET, PUT, DELETE or POST.
    pub method: Method,
    /// From the first `/`, query included.
    pub path: String,
    /// The body and its content type.
    pub body: Option<(Vec<u8>, &'a str)>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<&'a str>,
}

/// The client and the node list, tried in order.
#[derive(Debug)]
pub struct Nodes {
    /// One client for every node: one TLS configuration, one timeout.
    client: Client,
    /// Base URLs without a trailing `/`.
    urls: Vec<String>,
}

impl Nodes {
    /// A client for `urls`, trusting only the PEM certificates of `ca` when given.
    pub fn new(urls: &[String], ca: Option<&[u8]>, timeout: Duration) -> Result<Nodes, Failure> {
        let mut builder = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("geecache-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Failure::Other(format!("--ca: not PEM certificates: {e}")))?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Failure::Other(format!("cannot set up the HTTP client: {e}")))?;
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(Failure::Other("--url names no node".into()));
        }
        Ok(Nodes { client, urls })
    }

    /// Sends `request` to the first node that can be reached and returns its successful
    /// answer. A node is passed over only when no request reached it (connecting failed), so
    /// a write is never sent twice.
    ///
    /// # Errors
    /// [`Failure::Answered`] for an error status, [`Failure::Unreachable`] when no node could
    /// be reached.
    pub fn send(&self, request: &Request<'_>) -> Result<(String, Response), Failure> {
        let mut reasons = Vec::new();
        for url in &self.urls {
            let mut builder = self
                .client
                .request(request.method.clone(), format!("{url}{}", request.path));
            if let Some(token) = request.token {
                builder = builder.bearer_auth(token);
            }
            if let Some((body, content_type)) = &request.body {
                builder = builder
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(body.clone());
            }
            match builder.send() {
                Ok(response) if response.status().is_success() => {
                    return Ok((url.clone(), response));
                }
                Ok(response) => return Err(answered(url, response)),
                Err(e) if e.is_connect() || e.is_builder() => {
                    reasons.push((url.clone(), error_chain(&e)));
                }
                Err(e) => return Err(Failure::Other(format!("{url}: {}", error_chain(&e)))),
            }
        }
        Err(Failure::Unreachable(reasons))
    }
}

/// The node's error answer: its JSON code and message, or its status and text.
fn answered(url: &str, response: Response) -> Failure {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j["error"][name].as_str())
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), message) => Failure::Answered {
            url: url.to_owned(),
            status,
            code,
            message: message.unwrap_or_default(),
        },
        _ => Failure::Answered {
            url: url.to_owned(),
            status,
            code: format!("http_{status}"),
            message: text.trim().to_owned(),
        },
    }
}

/// An error with its causes (reqwest's own message is only the outermost one).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
