//! Compression of stored values: codecs, the stored-value envelope, and a group's policy.
//!
//! - [`Compressor`] is the one codec trait. The host has five built in ([`builtin`]: none,
//!   gzip, snappy, lz4, zstd) and every loaded compressor plugin implements it too
//!   (`plugin::WasmCompressor`), so a group names its codec without caring which kind it is.
//! - [`Codecs`] is the registry by name, built once per node; a codec's name is the tag stored
//!   with every value, so decoding is never a guess.
//! - [`Stored`] is a value as the node keeps it: a 12-byte header (original length, XXH3-64 of
//!   the original bytes), the codec's payload and the codec. Peers and the storage tier get
//!   the header followed by the payload ([`Stored::framed`]); in memory the header's fields sit
//!   beside the payload, and a cached payload gets an allocation of its own size
//!   (`cache::CacheEntry::new`). Decoding checks the length and the checksum, so a corrupt or
//!   mis-tagged value is detected instead of served.
//! - [`Encoding`] is a group's policy: its codec and level, and the size below which values are
//!   kept raw. A value that does not shrink is kept raw too.
//!
//! Files: this one holds the trait, the envelope and the policy; `builtin.rs` the built-in
//! codecs, `metrics.rs` the codec metrics' table.

pub mod builtin;
pub mod metrics;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use xxhash_rust::xxh3::xxh3_64;

use crate::foreign::Foreign;

/// Bytes of the envelope header in front of every stored payload: the original length (u32,
/// little endian) and the XXH3-64 of the original bytes (u64, little endian).
pub const HEADER_BYTES: usize = 12;

/// Default size below which values are stored raw: smaller values rarely shrink enough to pay
/// for decoding them on every hit.
pub const DEFAULT_MIN_BYTES: usize = 256;

/// What can go wrong while encoding or decoding a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    /// No codec of that name is built in or loaded as a plugin.
    #[error("unknown codec {name:?}; known codecs: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names the node knows, for the message.
        known: String,
    },

    /// The level is outside the codec's range.
    #[error("codec {codec} does not take level {level}; levels: {range}")]
    BadLevel {
        /// The codec.
        codec: String,
        /// The level asked for.
        level: i32,
        /// The accepted levels, for the message.
        range: String,
    },

    /// The stored bytes do not decode to the value they claim to hold (bad header, a payload
    /// the codec rejects, a wrong length or checksum): corruption or a wrong codec tag.
    #[error("stored value is corrupt ({codec}): {reason}")]
    Corrupt {
        /// The codec the value was tagged with.
        codec: String,
        /// What did not match.
        reason: String,
    },

    /// The codec could not encode the value.
    #[error("codec {codec} failed: {reason}")]
    Failed {
        /// The codec.
        codec: String,
        /// Why.
        reason: String,
    },

    /// A compressor plugin produced output that does not decode back to its input.
    #[error(
        "compressor plugin {codec} returned output that does not decode to its input: {reason}"
    )]
    Garbage {
        /// The plugin's name.
        codec: String,
        /// What was wrong.
        reason: String,
    },

    /// A compressor plugin's call failed (trap, timeout, memory cap, or its own error).
    #[error(transparent)]
    Plugin(Foreign),
}

impl CodecError {
    /// A stable, machine-readable code for API clients.
    pub fn code(&self) -> &str {
        match self {
            CodecError::Unknown { .. } => "unknown_codec",
            CodecError::BadLevel { .. } => "bad_codec_level",
            CodecError::Corrupt { .. } => "corrupt_value",
            CodecError::Failed { .. } => "codec_failed",
            CodecError::Garbage { .. } => "plugin_bad_output",
            CodecError::Plugin(p) => p.code(),
        }
    }

    /// The HTTP status this error is served with: a value sent to us that does not decode is
    /// the sender's fault (400); a codec that cannot work is the node's (500, or the plugin's
    /// 503/504).
    pub fn status(&self) -> u16 {
        match self {
            CodecError::Unknown { .. }
            | CodecError::BadLevel { .. }
            | CodecError::Corrupt { .. } => 400,
            CodecError::Failed { .. } => 500,
            CodecError::Garbage { .. } => 503,
            CodecError::Plugin(p) => p.status(),
        }
    }
}

/// The codecs whose payload is a standard HTTP content coding: a client whose
/// `Accept-Encoding` takes one gets a value stored in it as it is, with that
/// `Content-Encoding` (no decode on the node).
pub const CONTENT_CODINGS: [&str; 2] = ["gzip", "zstd"];

/// A codec: compresses values and decompresses what it compressed.
///
/// Implementations must be deterministic in what they accept: `decompress(compress(x))` is `x`
/// byte for byte. Built-in codecs resolve their futures at once; plugin codecs run in the wasm
/// runtime.
pub trait Compressor: Send + Sync + fmt::Debug + 'static {
    /// The codec's name: what groups configure and the tag stored with every value.
    fn name(&self) -> &str;

    /// Checks a level before a group is built with it, so a bad config fails at startup.
    ///
    /// # Errors
    /// [`CodecError::BadLevel`] when the codec does not take `level`.
    fn check_level(&self, level: Option<i32>) -> Result<(), CodecError>;

    /// Whether the node must check that this codec's output decodes back to its input before it
    /// stores it. True for plugins (their output is not trusted); the built-ins are.
    fn verify_output(&self) -> bool {
        false
    }

    /// Compresses `data` at `level` (the codec's default when `None`).
    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>>;

    /// Decompresses `data`, refusing output longer than `max_len` without allocating it.
    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>>;
}

/// A shared handle to a codec; compares by name (the tag).
///
/// A thin pointer (to the codec's fat one): every cached entry holds one, and its 8 bytes
/// less keep a `CacheEntry`'s allocation at 64 bytes, a power of two (`cache/entry.rs`).
#[derive(Clone)]
pub struct Codec(Arc<Arc<dyn Compressor>>);

impl Codec {
    /// Wraps a codec.
    pub fn new(compressor: Arc<dyn Compressor>) -> Self {
        Codec(Arc::new(compressor))
    }

    /// The codec's name, which is its tag.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Whether this is the `none` codec (values kept raw).
    pub fn is_none(&self) -> bool {
        self.name() == "none"
    }

    /// The codec itself.
    pub fn compressor(&self) -> &dyn Compressor {
        &**self.0
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Codec {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Codec {}

/// Every codec a node knows, by name: the built-ins plus its compressor plugins.
#[derive(Debug, Clone)]
pub struct Codecs {
    /// Name → codec.
    by_name: BTreeMap<String, Codec>,
    /// The `none` codec, used for raw values; kept apart for the hot path.
    none: Codec,
}

impl Default for Codecs {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Codecs {
    /// The built-in codecs: none, gzip, snappy, lz4, zstd.
    pub fn builtin() -> Self {
        let none = Codec::new(Arc::new(builtin::NoCompression));
        let mut codecs = Codecs {
            by_name: BTreeMap::new(),
            none: none.clone(),
        };
        for c in [
            none,
            Codec::new(Arc::new(builtin::Gzip)),
            Codec::new(Arc::new(builtin::Snappy)),
            Codec::new(Arc::new(builtin::Lz4)),
            Codec::new(Arc::new(builtin::Zstd)),
        ] {
            codecs.by_name.insert(c.name().to_owned(), c);
        }
        codecs
    }

    /// Adds a codec (a compressor plugin) under its own name.
    ///
    /// # Errors
    /// When a codec of that name exists already (a plugin may not shadow a built-in).
    pub fn add(&mut self, compressor: Arc<dyn Compressor>) -> Result<(), String> {
        let codec = Codec::new(compressor);
        let name = codec.name().to_owned();
        if self.by_name.contains_key(&name) {
            return Err(format!(
                "a compressor plugin reports the name {name:?}, which is already a codec; \
                 codec names must be unique"
            ));
        }
        self.by_name.insert(name, codec);
        Ok(())
    }

    /// The codec called `name`.
    ///
    /// # Errors
    /// [`CodecError::Unknown`], listing the known names.
    pub fn get(&self, name: &str) -> Result<Codec, CodecError> {
        if name == "none" {
            return Ok(self.none.clone());
        }
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| CodecError::Unknown {
                name: name.to_owned(),
                known: self.names().join(", "),
            })
    }

    /// The `none` codec.
    pub fn none(&self) -> Codec {
        self.none.clone()
    }

    /// The names of every codec, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// A group's encoding from its `codec[:level]` spec and minimum size.
    ///
    /// # Errors
    /// An unknown codec or a level it does not take.
    pub fn encoding(&self, spec: &CodecSpec, min_bytes: usize) -> Result<Encoding, CodecError> {
        let codec = self.get(&spec.name)?;
        codec.compressor().check_level(spec.level)?;
        Ok(Encoding {
            codec,
            level: spec.level,
            min_bytes,
            none: self.none(),
        })
    }

    /// A stored value received from a peer or a storage backend: `bytes` tagged `codec`.
    ///
    /// # Errors
    /// [`CodecError::Unknown`] when this node does not know the codec;
    /// [`CodecError::Corrupt`] when `bytes` is shorter than the header.
    pub fn stored(&self, bytes: Bytes, codec: &str) -> Result<Stored, CodecError> {
        let codec = self.get(codec)?;
        let Some((raw_len, sum)) = header(&bytes) else {
            return Err(CodecError::Corrupt {
                codec: codec.name().to_owned(),
                reason: format!("{} bytes is shorter than the header", bytes.len()),
            });
        };
        Ok(Stored {
            payload: bytes.slice(HEADER_BYTES..),
            codec,
            raw_len,
            sum,
        })
    }
}

/// A group's `compression` setting: `codec` or `codec:level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecSpec {
    /// The codec's name.
    pub name: String,
    /// Its level; `None` is the codec's default.
    pub level: Option<i32>,
}

impl Default for CodecSpec {
    fn default() -> Self {
        CodecSpec {
            name: "none".into(),
            level: None,
        }
    }
}

impl std::str::FromStr for CodecSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((name, level)) => {
                let level = level.trim().parse::<i32>().map_err(|_| {
                    format!(
                        "compression {s:?}: the level after ':' must be an integer, e.g. zstd:3"
                    )
                })?;
                (name, Some(level))
            }
            None => (s, None),
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "compression {s:?}: expected CODEC[:LEVEL], e.g. zstd:3, lz4 or none"
            ));
        }
        Ok(CodecSpec {
            name: name.to_owned(),
            level,
        })
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Some(l) => write!(f, "{}:{l}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How much a [`Stored::decode`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The value came from this node's memory, where only verified values are put: check what
    /// is decompressed (length and checksum), hand raw values out as they are.
    Decoded,
    /// The value crossed a boundary (a peer, a storage backend): check everything, raw
    /// values included.
    All,
}

/// A value as the node keeps it: the codec's payload, the header's two fields beside it, and
/// the codec.
///
/// On the wire and in storage backends a stored value is one byte string, the header
/// ([`HEADER_BYTES`]) then the payload ([`Stored::framed`]). In memory the header's fields live
/// here, beside the payload rather than in its allocation (and in a cache entry, in the entry's
/// 64 bytes): a cached 1,024-byte payload then fills mimalloc's 1,024-byte class, where header
/// and payload together (1,036 bytes) took the 1,280-byte one (docs/performance.md, "Memory").
/// A `Stored` from the network is a slice of its body until the cache copies it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The codec's payload.
    payload: Bytes,
    /// How the payload is encoded.
    codec: Codec,
    /// The original value's length, as the header claims it.
    raw_len: u32,
    /// The XXH3-64 of the original value, as the header claims it.
    sum: u64,
}

impl Stored {
    /// `value` stored raw (codec `none`), as a group does with small values.
    ///
    /// # Panics
    /// When `value` is 4 GiB or longer (groups refuse such values before they get here).
    pub fn raw(value: &[u8]) -> Self {
        Self::frame(value, value, Codec::new(Arc::new(builtin::NoCompression)))
            .expect("a value under 4 GiB")
    }

    /// A stored value from its parts: the payload, its codec, and the header's two fields
    /// (the original length and XXH3-64). For the cache's entries, which keep the parts apart.
    pub(crate) fn from_parts(payload: Bytes, codec: Codec, raw_len: u32, sum: u64) -> Self {
        Stored {
            payload,
            codec,
            raw_len,
            sum,
        }
    }

    /// The parts [`Stored::from_parts`] takes.
    pub(crate) fn into_parts(self) -> (Bytes, Codec, u32, u64) {
        (self.payload, self.codec, self.raw_len, self.sum)
    }

    /// The stored bytes as they are sent to peers and storage backends: the header, then the
    /// payload. A copy, in a new allocation.
    pub fn framed(&self) -> Bytes {
        let mut bytes = BytesMut::with_capacity(self.len());
        bytes.put_u32_le(self.raw_len);
        bytes.put_u64_le(self.sum);
        bytes.put_slice(&self.payload);
        bytes.freeze()
    }

    /// The codec's payload, without the header: what a client that accepts the codec as a
    /// content coding can take as it is.
    pub fn payload(&self) -> Bytes {
        self.payload.clone()
    }

    /// The codec of the payload.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Bytes of the header and the payload, as sent on the wire and counted by the codec
    /// statistics (the cache weighs the payload's allocation instead).
    pub fn len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }

    /// Whether there are no stored bytes at all (never true: the header is always there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The original length the header claims.
    pub fn raw_len(&self) -> usize {
        self.raw_len as usize
    }

    /// Frames `payload` (the encoding of `raw`) with the header of `raw`.
    fn frame(raw: &[u8], payload: &[u8], codec: Codec) -> Result<Self, CodecError> {
        let raw_len = u32::try_from(raw.len()).map_err(|_| CodecError::Failed {
            codec: codec.name().to_owned(),
            reason: format!(
                "values of 4 GiB or more cannot be stored ({} bytes)",
                raw.len()
            ),
        })?;
        Ok(Stored {
            payload: Bytes::copy_from_slice(payload),
            codec,
            raw_len,
            sum: xxh3_64(raw),
        })
    }

    /// The original value, checked as `verify` says and never longer than `max_len`.
    ///
    /// # Errors
    /// [`CodecError::Corrupt`] when the payload, the length or the checksum is wrong
    /// (corruption, or a wrong codec tag); a plugin codec's own error.
    pub async fn decode(&self, max_len: usize, verify: Verify) -> Result<Bytes, CodecError> {
        let corrupt = |reason: String| CodecError::Corrupt {
            codec: self.codec.name().to_owned(),
            reason,
        };
        let len = self.raw_len();
        if len > max_len {
            return Err(corrupt(format!(
                "claims {len} bytes, more than the {max_len} allowed"
            )));
        }
        let (value, check) = if self.codec.is_none() {
            (self.payload.clone(), verify == Verify::All)
        } else {
            let out = self
                .codec
                .compressor()
                .decompress(&self.payload, len)
                .await?;
            (Bytes::from(out), true)
        };
        if value.len() != len {
            return Err(corrupt(format!(
                "decodes to {} bytes, the header says {len}",
                value.len()
            )));
        }
        if check && xxh3_64(&value) != self.sum {
            return Err(corrupt("checksum mismatch".into()));
        }
        Ok(value)
    }
}

/// The (length, checksum) header of stored bytes.
fn header(bytes: &[u8]) -> Option<(u32, u64)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let sum = u64::from_le_bytes(bytes.get(4..HEADER_BYTES)?.try_into().ok()?);
    Some((len, sum))
}

/// A group's compression policy.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// The codec values are compressed with.
    codec: Codec,
    /// Its level; `None` is the codec's default.
    level: Option<i32>,
    /// Values shorter than this are kept raw.
    min_bytes: usize,
    /// The raw codec, for values kept raw.
    none: Codec,
}

impl Default for Encoding {
    fn default() -> Self {
        let none = Codecs::builtin().none();
        Encoding {
            codec: none.clone(),
            level: None,
            min_bytes: DEFAULT_MIN_BYTES,
            none,
        }
    }
}

impl Encoding {
    /// The codec values are compressed with.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// `value` as this group stores it: compressed when it is at least `min_bytes` long and
    /// shrinks, raw otherwise.
    ///
    /// # Errors
    /// The codec's error; [`CodecError::Garbage`] when a plugin codec's output does not decode
    /// back to `value` (nothing it produced is stored).
    pub async fn encode(&self, value: &[u8]) -> Result<Stored, CodecError> {
        if self.codec.is_none() || value.len() < self.min_bytes {
            return Stored::frame(value, value, self.none.clone());
        }
        let c = self.codec.compressor();
        let payload = c.compress(value, self.level).await?;
        if payload.len() >= value.len() {
            return Stored::frame(value, value, self.none.clone());
        }
        if c.verify_output() {
            let garbage = |reason: String| CodecError::Garbage {
                codec: self.codec.name().to_owned(),
                reason,
            };
            let back = c
                .decompress(&payload, value.len())
                .await
                .map_err(|e| garbage(e.to_string()))?;
            if back != value {
                return Err(garbage(format!(
                    "{} bytes in, {} different bytes back",
                    value.len(),
                    back.len()
                )));
            }
        }
        Stored::frame(value, &payload, self.codec.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
