//! One cached entry ([`CacheEntry`]): a handle to a single 64-byte allocation beside the
//! payload's own, shared by the store and every reader.
//!
//! Why this shape (docs/performance.md, "Memory"): an entry used to be an `Arc` of a struct
//! holding a [`Stored`] (a `Bytes`, a codec, the header's fields) and the expiry: 96 bytes
//! that mimalloc v3 serves from its 112-byte class, plus the 32-byte shared header `Bytes`
//! allocates on its first clone. Here the payload is a plain boxed slice in an allocation of
//! its exact size, and everything else fits 48 bytes, so the `Arc` is 64: a power of two, its
//! own size class in mimalloc. A reader that wants the payload as `Bytes` gets one that holds
//! the entry ([`Bytes::from_owner`]): a small allocation per read that lives as long as the
//! answer, not per entry.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::{Cached, MissReason, weight_of};
use crate::compression::{Codec, Stored};

/// `expires_at_ms` of an entry that never expires.
const NEVER: u64 = u64::MAX;

/// One cached entry: the value (or its absence) and when it stops being valid.
///
/// A handle: cloning it is a count, and every clone is the same entry ([`CacheEntry::same`]).
/// Built from a [`Cached`] with [`CacheEntry::new`], which moves the payload into an
/// allocation of its own exact size.
#[derive(Clone)]
pub struct CacheEntry(Arc<EntryInner>);

/// What a [`CacheEntry`] holds: 48 bytes (a 64-byte `Arc`), checked by a test below.
struct EntryInner {
    /// The codec's payload, in an allocation of its own size; empty for a negative entry.
    payload: Box<[u8]>,
    /// How the payload is encoded; `None` for a negative entry.
    codec: Option<Codec>,
    /// The XXH3-64 of the original value, as its header claims it.
    sum: u64,
    /// Absolute expiry, in milliseconds since the Unix epoch; [`NEVER`] for none.
    expires_at_ms: u64,
    /// The original value's length, as its header claims it.
    raw_len: u32,
    /// How long past its expiry the entry may still be answered, marked stale.
    stale_ms: u32,
}

/// The payload of an entry as a `Bytes` owner: keeps the entry alive.
struct PayloadOf(Arc<EntryInner>);

impl AsRef<[u8]> for PayloadOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.payload
    }
}

impl CacheEntry {
    /// An entry for `cached`, valid until `expires_at_ms` (milliseconds since the Unix
    /// epoch; `None`: never expires, the byte budget still evicts it), answerable stale for
    /// `stale_ms` past it (stale-while-revalidate, stale-if-error; 0: not at all).
    ///
    /// The payload moves into an allocation of its exact size: without a copy when the
    /// `Stored` is its only holder and its allocation is that size, else copied, so that a
    /// value received over the network never keeps its request's or answer's buffer alive.
    pub fn new(cached: Cached, expires_at_ms: Option<u64>, stale_ms: u32) -> Self {
        let (payload, codec, raw_len, sum) = match cached {
            Cached::Value(stored) => {
                let (payload, codec, raw_len, sum) = stored.into_parts();
                (exact_box(payload), Some(codec), raw_len, sum)
            }
            Cached::NotFound => (Box::default(), None, 0, 0),
        };
        CacheEntry(Arc::new(EntryInner {
            payload,
            codec,
            sum,
            // An explicit expiry stays one (a millisecond short of the end of time), so that
            // it is not read back, nor sent to peers, as "never".
            expires_at_ms: expires_at_ms.map_or(NEVER, |at| at.min(NEVER - 1)),
            raw_len,
            stale_ms,
        }))
    }

    /// The value, or [`Cached::NotFound`]. The value's payload holds this entry (no copy).
    pub fn cached(&self) -> Cached {
        self.stored().map_or(Cached::NotFound, Cached::Value)
    }

    /// The value; `None` for a negative entry. Its payload holds this entry (no copy).
    pub fn stored(&self) -> Option<Stored> {
        let inner = &self.0;
        let codec = inner.codec.clone()?;
        Some(Stored::from_parts(
            self.payload(),
            codec,
            inner.raw_len,
            inner.sum,
        ))
    }

    /// The stored payload (the value as its codec left it, without the header); empty for a
    /// negative entry. It holds this entry: no copy.
    pub fn payload(&self) -> Bytes {
        if self.0.payload.is_empty() {
            return Bytes::new();
        }
        Bytes::from_owner(PayloadOf(Arc::clone(&self.0)))
    }

    /// The codec of the stored payload; `None` for a negative entry.
    pub fn codec(&self) -> Option<&Codec> {
        self.0.codec.as_ref()
    }

    /// Whether this is a negative entry ("no such key").
    pub fn is_not_found(&self) -> bool {
        self.0.codec.is_none()
    }

    /// Absolute expiry, in milliseconds since the Unix epoch; `None` never expires.
    pub fn expires_at_ms(&self) -> Option<u64> {
        Some(self.0.expires_at_ms).filter(|&at| at != NEVER)
    }

    /// How long past its expiry the entry may still be answered, marked stale.
    pub fn stale_ms(&self) -> u32 {
        self.0.stale_ms
    }

    /// Whether `other` is this very entry (a clone of the same handle), not merely an equal
    /// one: a newer entry with the same contents is another entry.
    pub fn same(&self, other: &CacheEntry) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether the entry is expired at `now_ms`; an entry expires at its `expires_at_ms`
    /// exactly, not one millisecond later.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.0.expires_at_ms <= now_ms
    }

    /// Whether the entry is past its stale window too at `now_ms`: nothing may answer it.
    pub fn is_dead_at(&self, now_ms: u64) -> bool {
        self.0
            .expires_at_ms
            .saturating_add(u64::from(self.0.stale_ms))
            <= now_ms
    }

    /// Why this entry, once expired, is a miss.
    pub(super) fn expiry_reason(&self) -> MissReason {
        if self.is_not_found() {
            MissReason::NegativeExpired
        } else {
            MissReason::Expired
        }
    }

    /// What the entry counts against the byte budget when stored under `key`: the allocations
    /// of the key and of the stored payload, as the allocator rounds them
    /// ([`super::allocation_bytes`]), + [`super::ENTRY_OVERHEAD_BYTES`]. Exposed so callers can
    /// tell in advance whether a value can fit at all.
    pub fn weight(&self, key: &str) -> u64 {
        weight_of(key.len(), self.0.payload.len())
    }

    /// Why this entry, pushed out for room at `now_ms`, left: expired if nothing could have
    /// answered it any more, else evicted.
    pub(super) fn eviction_reason(&self, now_ms: u64) -> MissReason {
        if self.is_dead_at(now_ms) {
            self.expiry_reason()
        } else {
            MissReason::Evicted
        }
    }
}

/// `payload` in an allocation of exactly its length: the same one when `payload` is its only
/// holder and was allocated at that length, else a copy. A `Vec` whose capacity exceeds its
/// length is copied rather than shrunk, since mimalloc may shrink in place and keep the larger
/// block, which the entry's weight would not see.
fn exact_box(payload: Bytes) -> Box<[u8]> {
    match payload.try_into_mut() {
        Ok(unique) => {
            let vec = Vec::from(unique);
            if vec.capacity() == vec.len() {
                vec.into_boxed_slice()
            } else {
                Box::from(vec.as_slice())
            }
        }
        Err(shared) => Box::from(&shared[..]),
    }
}

impl PartialEq for CacheEntry {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
            || (self.cached() == other.cached()
                && self.0.expires_at_ms == other.0.expires_at_ms
                && self.0.stale_ms == other.0.stale_ms)
    }
}

impl Eq for CacheEntry {}

impl fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheEntry")
            .field("cached", &self.cached())
            .field("expires_at_ms", &self.expires_at_ms())
            .field("stale_ms", &self.0.stale_ms)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Buf as _;

    #[test]
    fn an_entry_is_one_64_byte_allocation_beside_its_payload() {
        assert_eq!(std::mem::size_of::<EntryInner>(), 48);
        assert_eq!(std::mem::size_of::<CacheEntry>(), 8);
    }

    #[test]
    fn a_value_round_trips_through_an_entry() {
        let stored = Stored::raw(b"hello");
        let entry = CacheEntry::new(Cached::Value(stored.clone()), Some(42), 7);
        assert_eq!(entry.cached(), Cached::Value(stored));
        assert_eq!(entry.expires_at_ms(), Some(42));
        assert_eq!(entry.stale_ms(), 7);
        assert!(!entry.is_not_found());
        assert_eq!(&entry.payload()[..], b"hello");

        let none = CacheEntry::new(Cached::NotFound, None, 0);
        assert_eq!(none.cached(), Cached::NotFound);
        assert_eq!(none.expires_at_ms(), None);
        assert!(!none.is_expired_at(u64::MAX - 1));
        assert!(none.is_not_found());
        assert!(none.payload().is_empty());
    }

    #[test]
    fn the_payload_gets_an_allocation_of_its_own_exact_size() {
        // A slice of a larger buffer is copied out of it.
        let big = Bytes::from(vec![7u8; 4096]);
        let slice = big.slice(100..1124);
        let stored = Stored::from_parts(slice, Stored::raw(b"").codec().clone(), 1024, 0);
        let entry = CacheEntry::new(Cached::Value(stored), None, 0);
        assert_eq!(entry.0.payload.len(), 1024);
        assert_ne!(entry.0.payload.as_ptr(), big[100..].as_ptr());

        // The only holder of an exact allocation gives it up without a copy.
        let exact = Bytes::from(vec![1u8; 1024]);
        let at = exact.as_ptr();
        let stored = Stored::from_parts(exact, Stored::raw(b"").codec().clone(), 1024, 0);
        let entry = CacheEntry::new(Cached::Value(stored), None, 0);
        assert_eq!(entry.0.payload.as_ptr(), at);

        // A unique buffer longer than the payload is copied, not shrunk in place: the value
        // at its end (its only holder, advanced past the rest), or in a vector with room to
        // spare.
        let mut tail = Bytes::from(vec![2u8; 2048]);
        tail.advance(1024);
        let spare = {
            let mut v = Vec::with_capacity(2048);
            v.extend_from_slice(&[3u8; 1024]);
            Bytes::from(v)
        };
        for (bytes, fill) in [(tail, 2u8), (spare, 3u8)] {
            let at = bytes.as_ptr();
            let stored = Stored::from_parts(bytes, Stored::raw(b"").codec().clone(), 1024, 0);
            let entry = CacheEntry::new(Cached::Value(stored), None, 0);
            assert_eq!(&entry.0.payload[..], &[fill; 1024][..]);
            assert_ne!(entry.0.payload.as_ptr(), at, "copied out, not reused");
        }
    }

    #[test]
    fn an_explicit_expiry_is_never_read_back_as_none() {
        let entry = CacheEntry::new(Cached::NotFound, Some(u64::MAX), 0);
        assert_eq!(entry.expires_at_ms(), Some(u64::MAX - 1));
        assert!(!entry.is_expired_at(u64::MAX - 2));
    }
}
