//! The error a plugin returns, mirroring the WIT `types.error` variant.

use std::fmt;

/// Why a plugin call failed.
///
/// "No such key" is never an error: getters return [`Lookup::NotFound`](crate::Lookup) and
/// storage backends `Ok(None)`. The message is shown to operators, never to cache clients.
///
/// `?` converts a `String` or `&str` into [`Error::Other`]:
///
/// ```
/// use geecache_guest_sdk::Error;
///
/// fn parse(level: &str) -> Result<u32, Error> {
///     level.parse().map_err(|_| Error::InvalidInput(format!("bad level {level:?}")))
/// }
///
/// assert_eq!(parse("x"), Err(Error::InvalidInput("bad level \"x\"".into())));
/// assert_eq!(Error::from("boom"), Error::Other("boom".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Error {
    /// The input was malformed or not acceptable to this plugin (bad key, bad config value,
    /// unsupported compression level, output larger than allowed).
    InvalidInput(String),
    /// Something the plugin depends on (a database, a directory) is unavailable right now;
    /// retrying later may succeed.
    Unavailable(String),
    /// Any other failure.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(msg) => write!(f, "invalid input: {msg}"),
            Self::Unavailable(msg) => write!(f, "unavailable: {msg}"),
            Self::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(msg: String) -> Self {
        Self::Other(msg)
    }
}

impl From<&str> for Error {
    fn from(msg: &str) -> Self {
        Self::Other(msg.to_owned())
    }
}
