//! The entry file's format (version 1): [`encode`] turns a key and its entry into the bytes of
//! one file, [`decode`] reads them back and refuses a damaged or foreign file.

use geecache_guest_sdk::{Entry, Error};

const MAGIC: &[u8; 4] = b"GCFS";
const FORMAT_VERSION: u8 = 1;
const FLAG_EXPIRES: u8 = 1;
/// Magic, version, flags, expiry, codec length, key length.
const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 2 + 4;

pub(crate) fn encode(key: &str, entry: &Entry) -> Result<Vec<u8>, Error> {
    let codec_len = u16::try_from(entry.codec.len())
        .map_err(|_| Error::InvalidInput("codec name longer than 65535 bytes".into()))?;
    let key_len = u32::try_from(key.len())
        .map_err(|_| Error::InvalidInput("key longer than 4 GiB".into()))?;
    let mut out =
        Vec::with_capacity(HEADER_LEN + entry.codec.len() + key.len() + entry.value.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(if entry.expires_at_ms.is_some() {
        FLAG_EXPIRES
    } else {
        0
    });
    out.extend_from_slice(&entry.expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&codec_len.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(entry.codec.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&entry.value);
    Ok(out)
}

/// Parses a file written by [`encode`] into its key and entry.
pub(crate) fn decode(bytes: &[u8]) -> Result<(&str, Entry), &'static str> {
    let mut rest = bytes;
    if take(&mut rest, 4)? != MAGIC {
        return Err("not an fs_storage file");
    }
    if take(&mut rest, 1)? != [FORMAT_VERSION] {
        return Err("unknown format version");
    }
    let flags = take(&mut rest, 1)?[0];
    let expires_at_ms = u64::from_le_bytes(array(take(&mut rest, 8)?)?);
    let codec_len = u16::from_le_bytes(array(take(&mut rest, 2)?)?);
    let key_len = u32::from_le_bytes(array(take(&mut rest, 4)?)?);
    let codec = take(&mut rest, usize::from(codec_len))?;
    let key = take(
        &mut rest,
        usize::try_from(key_len).map_err(|_| "key too long")?,
    )?;
    let codec = std::str::from_utf8(codec).map_err(|_| "codec is not UTF-8")?;
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
    let entry = Entry {
        value: rest.to_vec(),
        codec: codec.to_owned(),
        expires_at_ms: (flags & FLAG_EXPIRES != 0).then_some(expires_at_ms),
    };
    Ok((key, entry))
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if rest.len() < n {
        return Err("truncated file");
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], &'static str> {
    bytes.try_into().map_err(|_| "truncated file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let entry = Entry {
            value: vec![0, 1, 2, 255],
            codec: "zstd".into(),
            expires_at_ms: Some(1_700_000_000_000),
        };
        let bytes = encode("k\u{e9}y", &entry).expect("encodes");
        assert_eq!(decode(&bytes), Ok(("k\u{e9}y", entry)));

        let bare = Entry::new(Vec::new(), "");
        let bytes = encode("", &bare).expect("encodes");
        assert_eq!(decode(&bytes), Ok(("", bare)));
    }

    #[test]
    fn decode_rejects_damage() {
        let bytes = encode("key", &Entry::new(*b"value", "none")).expect("encodes");
        for len in 0..HEADER_LEN + 4 + 3 {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode(&bad).is_err());
    }
}
