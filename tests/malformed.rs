//! Malformed input never panics: the pgoutput decoder and the conninfo /
//! URI parser get random bytes and strings, and valid input cut short or
//! with bytes flipped, and must answer with a value or an error. (proptest
//! on the stable toolchain; `just fuzz` runs the same properties under
//! cargo-fuzz's coverage-guided libFuzzer where a nightly-capable rustc is
//! at hand.)

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use pgrepl::conn::ConnConfig;
use pgrepl::stream::pgoutput::decode_in;

/// Valid pgoutput messages of every kind, to cut and flip.
fn valid_messages() -> Vec<(Vec<u8>, bool)> {
    let tuple = |b: &mut BytesMut| {
        b.put_i16(4);
        b.put_u8(b'n');
        b.put_u8(b'u');
        b.put_u8(b't');
        b.put_i32(3);
        b.put_slice(b"abc");
        b.put_u8(b'b');
        b.put_i32(2);
        b.put_slice(&[0, 1]);
    };
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut BytesMut), streamed: bool| {
        let mut b = BytesMut::new();
        f(&mut b);
        out.push((b.to_vec(), streamed));
    };
    push(
        &|b| {
            b.put_u8(b'B');
            b.put_u64(16);
            b.put_i64(1);
            b.put_u32(7);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'C');
            b.put_u8(0);
            b.put_u64(16);
            b.put_u64(24);
            b.put_i64(1);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'R');
            b.put_u32(99);
            b.put_slice(b"public\0t\0");
            b.put_u8(b'd');
            b.put_i16(2);
            b.put_u8(1);
            b.put_slice(b"id\0");
            b.put_u32(23);
            b.put_i32(-1);
            b.put_u8(0);
            b.put_slice(b"v\0");
            b.put_u32(25);
            b.put_i32(-1);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'Y');
            b.put_u32(16384);
            b.put_slice(b"public\0mood\0");
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'I');
            b.put_u32(99);
            b.put_u8(b'N');
            tuple(b);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'U');
            b.put_u32(99);
            b.put_u8(b'K');
            tuple(b);
            b.put_u8(b'N');
            tuple(b);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'U');
            b.put_u32(5);
            b.put_u32(99);
            b.put_u8(b'O');
            tuple(b);
            b.put_u8(b'N');
            tuple(b);
        },
        true,
    );
    push(
        &|b| {
            b.put_u8(b'D');
            b.put_u32(99);
            b.put_u8(b'O');
            tuple(b);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'T');
            b.put_u32(2);
            b.put_u8(3);
            b.put_u32(99);
            b.put_u32(100);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'M');
            b.put_u8(1);
            b.put_u64(16);
            b.put_slice(b"prefix\0");
            b.put_u32(3);
            b.put_slice(b"abc");
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'S');
            b.put_u32(5);
            b.put_u8(1);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'c');
            b.put_u32(5);
            b.put_u8(0);
            b.put_u64(16);
            b.put_u64(24);
            b.put_i64(1);
        },
        false,
    );
    push(
        &|b| {
            b.put_u8(b'A');
            b.put_u32(5);
            b.put_u32(6);
        },
        false,
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Any bytes at all: a message or an error.
    #[test]
    fn the_decoder_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), streamed: bool) {
        let _ = decode_in(Bytes::from(bytes), streamed);
    }

    /// Valid messages cut anywhere: an error, never a panic nor a message
    /// read past its end.
    #[test]
    fn the_decoder_refuses_messages_cut_short(which in 0usize..13, cut in 0usize..80) {
        let (msg, streamed) = valid_messages()[which].clone();
        prop_assert!(decode_in(Bytes::from(msg.clone()), streamed).is_ok(), "the message itself is valid");
        if cut < msg.len() {
            prop_assert!(decode_in(Bytes::from(msg[..cut].to_vec()), streamed).is_err());
        }
    }

    /// Valid messages with bytes changed (lengths, counts, tags).
    #[test]
    fn the_decoder_survives_flipped_bytes(
        which in 0usize..13,
        flips in proptest::collection::vec((0usize..80, any::<u8>()), 1..6),
        streamed: bool,
    ) {
        let (mut msg, _) = valid_messages()[which].clone();
        for (at, v) in flips {
            if let Some(b) = msg.get_mut(at) {
                *b = v;
            }
        }
        let _ = decode_in(Bytes::from(msg), streamed);
    }

    /// Any string as a conninfo or URI: a configuration or an error.
    #[test]
    fn the_conninfo_parser_takes_any_string(input in ".{0,120}") {
        let env = |_: &str| None;
        let _ = ConnConfig::resolve(&input, &env);
    }

    /// Strings made of what conninfo and URIs are made of.
    #[test]
    fn the_conninfo_parser_takes_near_valid_strings(
        input in r"(postgres(ql)?://)?([a-z%:@/?&=,\[\]'\\ .0-9-]|%[0-9a-fA-F]{0,2}|host=|port=|user=|password='[^']{0,5}|sslmode=|dbname=){0,24}"
    ) {
        let env = |_: &str| None;
        let _ = ConnConfig::resolve(&input, &env);
    }
}

#[test]
fn every_valid_message_decodes() {
    for (msg, streamed) in valid_messages() {
        assert!(
            decode_in(Bytes::from(msg.clone()), streamed).is_ok(),
            "{msg:?}"
        );
    }
}
