//! Every protobuf body of the peer protocol, as a peer (or anyone reaching the port) sends it:
//! decoding and turning it into the node's own types must end in a value or a typed error.
#![no_main]

use geecache_host::peer::PeerEntry;
use geecache_host::peer::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = proto::SetRequest::decode(data)
        && let Some(entry) = m.entry
    {
        let _ = PeerEntry::try_from(entry);
    }
    if let Ok(m) = proto::GetResponse::decode(data)
        && let Some(proto::get_response::Result::Entry(entry)) = m.result
    {
        let _ = PeerEntry::try_from(entry);
    }
    if let Ok(m) = proto::BatchGetResponse::decode(data) {
        for item in m.items {
            if let Some(proto::batch_item::Result::Entry(entry)) = item.result {
                let _ = PeerEntry::try_from(entry);
            }
        }
    }
    let _ = proto::BatchGetRequest::decode(data);
    let _ = proto::InvalidateRequest::decode(data);
    let _ = proto::ErrorInfo::decode(data);
});
