//! The pgoutput decoder on arbitrary bytes, inside and outside a streamed
//! block: a message or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let _ = pgrepl::stream::pgoutput::decode_in(bytes::Bytes::copy_from_slice(rest), flag & 1 == 1);
});
