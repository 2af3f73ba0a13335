//! The codecs built into the host: none, gzip, snappy, lz4, zstd.
//!
//! Each one is a unit struct implementing [`Compressor`]. Small inputs are coded inline (a
//! 16 KiB value costs microseconds); inputs of [`INLINE_LIMIT`] bytes or more run under
//! `tokio::task::block_in_place` on a multi-threaded runtime, so a slow level on a large value
//! (zstd:19 does a few MB/s) does not stall the other tasks of that worker. Every `decompress`
//! refuses to produce more than `max_len` bytes *before* allocating it, so a hostile or corrupt
//! input cannot make the node allocate more than the value limit.
//!
//! **The heavy lane.** Coding of [`INLINE_LIMIT`] bytes or more takes a permit of one
//! node-wide semaphore first ([`set_concurrency`], `--codec-concurrency`, default: one per
//! core), so a flood of large PUTs at high zstd levels occupies at most that many threads,
//! not one per request (`block_in_place` would hand each its own). The wait for a permit is
//! where a request's deadline cuts in: a group codes under its load timeout, and a request
//! still waiting when it passes is answered 504 and never codes. Work that has started runs
//! to its end (libzstd cannot be interrupted), holding its permit.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::Semaphore;

use super::{CodecError, Compressor};

/// Inputs (or outputs, for decoding) at least this long are coded off the async path.
pub const INLINE_LIMIT: usize = 256 << 10;

/// The heavy lane's permits: set once at startup by [`set_concurrency`] (later calls change
/// nothing), one per core when never set.
static HEAVY: OnceLock<(Semaphore, usize)> = OnceLock::new();
/// Heavy codings running now, and waiting for a permit now.
static RUNNING: AtomicU64 = AtomicU64::new(0);
static WAITING: AtomicU64 = AtomicU64::new(0);

fn heavy_lane() -> &'static (Semaphore, usize) {
    HEAVY.get_or_init(|| lane_of(default_concurrency()))
}

fn lane_of(permits: usize) -> (Semaphore, usize) {
    let permits = permits.clamp(1, Semaphore::MAX_PERMITS);
    (Semaphore::new(permits), permits)
}

/// One per core (what `--codec-concurrency` defaults to).
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Sets how many codings of [`INLINE_LIMIT`] bytes or more may run at once, node-wide (at
/// least 1). The first call, or the first heavy coding, fixes it for the process: nodes that
/// share one process (tests) share one lane.
pub fn set_concurrency(permits: usize) {
    let _ = HEAVY.set(lane_of(permits));
}

/// The heavy lane at one instant, for `/api/v1/stats`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct LaneSnapshot {
    /// Codings that may run at once.
    pub concurrency: u64,
    /// Running now.
    pub running: u64,
    /// Waiting for a permit now.
    pub waiting: u64,
}

/// The heavy lane now.
pub fn lane() -> LaneSnapshot {
    LaneSnapshot {
        concurrency: heavy_lane().1 as u64,
        running: RUNNING.load(Ordering::Relaxed),
        waiting: WAITING.load(Ordering::Relaxed),
    }
}

/// Decrements its counter when dropped (a wait cancelled by a deadline included).
struct Counted(&'static AtomicU64);

impl Counted {
    fn new(counter: &'static AtomicU64) -> Counted {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs a synchronous codec body over `len` bytes as the trait's future: inline for small
/// inputs; for large ones, once the heavy lane has a permit, under `block_in_place` when the
/// runtime allows it.
fn ready<'a, T: Send + 'a>(
    len: usize,
    f: impl FnOnce() -> Result<T, CodecError> + Send + 'a,
) -> BoxFuture<'a, Result<T, CodecError>> {
    async move {
        if len < INLINE_LIMIT {
            return f();
        }
        let permit = {
            let _waiting = Counted::new(&WAITING);
            heavy_lane().0.acquire().await
        };
        // The semaphore is never closed; without a permit the work runs all the same.
        let _permit = permit.ok();
        let _running = Counted::new(&RUNNING);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(f)
        } else {
            f()
        }
    }
    .boxed()
}

/// Fails unless the codec has no levels and none was asked for.
fn no_level(codec: &str, level: Option<i32>) -> Result<(), CodecError> {
    match level {
        None => Ok(()),
        Some(l) => Err(CodecError::BadLevel {
            codec: codec.to_owned(),
            level: l,
            range: "none (this codec has no levels)".into(),
        }),
    }
}

/// Fails when `level` is outside `lo..=hi`.
fn level_in(codec: &str, level: i32, lo: i32, hi: i32) -> Result<(), CodecError> {
    if (lo..=hi).contains(&level) {
        return Ok(());
    }
    Err(CodecError::BadLevel {
        codec: codec.to_owned(),
        level,
        range: format!("{lo}..={hi}"),
    })
}

/// The output of a decoder that announced more bytes than allowed.
fn too_large(codec: &str, len: usize, max_len: usize) -> CodecError {
    CodecError::Corrupt {
        codec: codec.to_owned(),
        reason: format!("decodes to {len} bytes, more than the {max_len} allowed"),
    }
}

/// A decoder's own error, as a corrupt value.
fn corrupt(codec: &str, e: impl std::fmt::Display) -> CodecError {
    CodecError::Corrupt {
        codec: codec.to_owned(),
        reason: e.to_string(),
    }
}

/// Keeps values as they are: the tag of raw values, and the choice of groups that do not
/// compress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCompression;

impl Compressor for NoCompression {
    fn name(&self) -> &str {
        "none"
    }

    fn check_level(&self, level: Option<i32>) -> Result<(), CodecError> {
        no_level(self.name(), level)
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        _level: Option<i32>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(0, move || Ok(data.to_vec()))
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(0, move || {
            if data.len() > max_len {
                return Err(too_large(self.name(), data.len(), max_len));
            }
            Ok(data.to_vec())
        })
    }
}

/// gzip (RFC 1952) through flate2: levels 0–9, default 6. The payload is a complete gzip
/// member, so a stored value can be handed to an HTTP client as `Content-Encoding: gzip`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gzip;

impl Compressor for Gzip {
    fn name(&self) -> &str {
        "gzip"
    }

    fn check_level(&self, level: Option<i32>) -> Result<(), CodecError> {
        level.map_or(Ok(()), |l| level_in(self.name(), l, 0, 9))
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(data.len(), move || {
            self.check_level(level)?;
            let level = level.and_then(|l| u32::try_from(l).ok()).unwrap_or(6);
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2 + 64),
                flate2::Compression::new(level),
            );
            encoder
                .write_all(data)
                .and_then(|()| encoder.finish())
                .map_err(|e| CodecError::Failed {
                    codec: self.name().to_owned(),
                    reason: e.to_string(),
                })
        })
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(max_len.min(data.len().saturating_mul(4)), move || {
            // gzip's trailer holds the length mod 2^32; reading one byte past the limit is the
            // reliable way to tell "too long".
            let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(1);
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(self.name(), e))?;
            if out.len() > max_len {
                return Err(too_large(self.name(), out.len(), max_len));
            }
            Ok(out)
        })
    }
}

/// Snappy (raw block format, which starts with the uncompressed length) through snap.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snappy;

impl Compressor for Snappy {
    fn name(&self) -> &str {
        "snappy"
    }

    fn check_level(&self, level: Option<i32>) -> Result<(), CodecError> {
        no_level(self.name(), level)
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(data.len(), move || {
            self.check_level(level)?;
            snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| CodecError::Failed {
                    codec: self.name().to_owned(),
                    reason: e.to_string(),
                })
        })
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(max_len.min(data.len().saturating_mul(4)), move || {
            let len = snap::raw::decompress_len(data).map_err(|e| corrupt(self.name(), e))?;
            if len > max_len {
                return Err(too_large(self.name(), len, max_len));
            }
            snap::raw::Decoder::new()
                .decompress_vec(data)
                .map_err(|e| corrupt(self.name(), e))
        })
    }
}

/// LZ4 block format through lz4_flex, with the original length prepended (4 bytes, little
/// endian) so that any ratio decompresses into an exactly sized buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lz4;

impl Compressor for Lz4 {
    fn name(&self) -> &str {
        "lz4"
    }

    fn check_level(&self, level: Option<i32>) -> Result<(), CodecError> {
        no_level(self.name(), level)
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(data.len(), move || {
            self.check_level(level)?;
            if u32::try_from(data.len()).is_err() {
                return Err(CodecError::Failed {
                    codec: self.name().to_owned(),
                    reason: "values of 4 GiB or more do not fit lz4's length prefix".into(),
                });
            }
            Ok(lz4_flex::block::compress_prepend_size(data))
        })
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(max_len.min(data.len().saturating_mul(4)), move || {
            let (len, rest) =
                lz4_flex::block::uncompressed_size(data).map_err(|e| corrupt(self.name(), e))?;
            if len > max_len {
                return Err(too_large(self.name(), len, max_len));
            }
            let mut out = vec![0; len];
            let written = lz4_flex::block::decompress_into(rest, &mut out)
                .map_err(|e| corrupt(self.name(), e))?;
            if written != len {
                return Err(corrupt(
                    self.name(),
                    format!("announced {len} bytes but decoded {written}"),
                ));
            }
            Ok(out)
        })
    }
}

thread_local! {
    /// One zstd compression context per thread, reused across calls (building one costs far
    /// more than compressing a small value). Its level is set on every call.
    static ZSTD_ENCODER: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    /// One zstd decompression context per thread, reused across calls.
    static ZSTD_DECODER: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Zstandard through zstd (libzstd), levels from zstd's own range (1–22 plus negative "fast"
/// levels), default 3. Compression and decompression contexts are kept per thread and reused.
#[derive(Debug, Clone, Copy, Default)]
pub struct Zstd;

impl Zstd {
    /// zstd's default level.
    const DEFAULT_LEVEL: i32 = 3;
}

impl Compressor for Zstd {
    fn name(&self) -> &str {
        "zstd"
    }

    fn check_level(&self, level: Option<i32>) -> Result<(), CodecError> {
        let range = zstd::compression_level_range();
        level.map_or(Ok(()), |l| {
            level_in(self.name(), l, *range.start(), *range.end())
        })
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(data.len(), move || {
            self.check_level(level)?;
            let level = level.unwrap_or(Self::DEFAULT_LEVEL);
            let failed = |e: std::io::Error| CodecError::Failed {
                codec: "zstd".to_owned(),
                reason: e.to_string(),
            };
            ZSTD_ENCODER.with_borrow_mut(|slot| {
                let encoder = match slot {
                    Some(encoder) => {
                        encoder.set_compression_level(level).map_err(failed)?;
                        encoder
                    }
                    None => slot.insert(zstd::bulk::Compressor::new(level).map_err(failed)?),
                };
                // The frame records the content size (the input length is known up front), so
                // the decoder can size its buffer exactly.
                encoder.compress(data).map_err(failed)
            })
        })
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, CodecError>> {
        ready(max_len.min(data.len().saturating_mul(4)), move || {
            let len = match zstd::zstd_safe::get_frame_content_size(data) {
                Ok(Some(len)) => usize::try_from(len).unwrap_or(usize::MAX),
                Ok(None) => return Err(corrupt(self.name(), "frame does not record its size")),
                Err(e) => return Err(corrupt(self.name(), format!("{e:?}"))),
            };
            if len > max_len {
                return Err(too_large(self.name(), len, max_len));
            }
            ZSTD_DECODER.with_borrow_mut(|slot| {
                let decoder = match slot {
                    Some(decoder) => decoder,
                    None => slot
                        .insert(zstd::bulk::Decompressor::new().map_err(|e| corrupt("zstd", e))?),
                };
                decoder
                    .decompress(data, len)
                    .map_err(|e| corrupt("zstd", e))
            })
        })
    }
}
