#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Headers of a gRPC call as a client sends them.
fn call(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/runtime.v1.RuntimeService/Version"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_vec(), v.to_vec()))
    .collect()
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_head(payload.len(), kind, flags, stream, &mut out);
    out.extend_from_slice(payload);
    out
}

/// What h2 sees: frames, with every header block decoded by a decoder of its own.
#[derive(Debug, PartialEq)]
enum Seen {
    Headers {
        stream: u32,
        flags: u8,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Other {
        kind: u8,
        stream: u32,
        payload: Vec<u8>,
    },
}

fn parse_server_side(bytes: &[u8]) -> Vec<Seen> {
    assert!(bytes.starts_with(PREFACE));
    let mut rest = &bytes[PREFACE.len()..];
    let mut decoder = loona_hpack::Decoder::new();
    let mut seen = Vec::new();
    let mut block: Option<(u32, u8, Vec<u8>)> = None;
    while !rest.is_empty() {
        let head = Head::parse(rest[..FRAME_HEAD].try_into().unwrap());
        assert!(head.len <= OUT_FRAME, "frame of {} bytes", head.len);
        let payload = &rest[FRAME_HEAD..FRAME_HEAD + head.len];
        rest = &rest[FRAME_HEAD + head.len..];
        match head.kind {
            HEADERS => {
                assert_eq!(head.flags & PADDED, 0, "padding is dropped");
                let skip = if head.flags & PRIORITY != 0 { 5 } else { 0 };
                block = Some((head.stream, head.flags, payload[skip..].to_vec()));
            }
            CONTINUATION => block.as_mut().unwrap().2.extend_from_slice(payload),
            kind => seen.push(Seen::Other {
                kind,
                stream: head.stream,
                payload: payload.to_vec(),
            }),
        }
        if matches!(head.kind, HEADERS | CONTINUATION) && head.flags & END_HEADERS != 0 {
            let (stream, flags, fragment) = block.take().unwrap();
            seen.push(Seen::Headers {
                stream,
                flags: flags & (END_STREAM | PRIORITY),
                fields: decoder
                    .decode(&fragment)
                    .expect("h2 can decode what it gets"),
            });
        }
    }
    seen
}

fn authority(seen: &Seen) -> Vec<u8> {
    match seen {
        Seen::Headers { fields, .. } => fields
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| v.clone())
            .expect(":authority"),
        other => panic!("not headers: {other:?}"),
    }
}

/// A client connection: preface, SETTINGS, two calls on streams 1 and 3 (the second
/// block refers to the first one's dynamic-table entries) each with a DATA frame.
fn client_bytes(authority: &[u8]) -> Vec<u8> {
    let mut encoder = loona_hpack::Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    for stream in [1, 3] {
        let fields = call(authority);
        let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        out.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0]));
    }
    out
}

fn rewrite(input: &[u8]) -> (Vec<u8>, Rewriter) {
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    r.feed(input, &mut out).unwrap();
    (out, r)
}

#[test]
fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
    for bad in [
        &b"/run/hull/hull.sock"[..],
        b"%2Frun%2Fhull%2Fhull.sock",
        b"run%2Fhull.sock",
        b"",
    ] {
        let (out, r) = rewrite(&client_bytes(bad));
        let seen = parse_server_side(&out);
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(r.replaced, 2);
        for i in [1, 3] {
            assert_eq!(authority(&seen[i]), FALLBACK_AUTHORITY);
            let Seen::Headers { fields, .. } = &seen[i] else {
                unreachable!()
            };
            let mut expect = call(FALLBACK_AUTHORITY);
            expect.sort();
            let mut got = fields.clone();
            got.sort();
            assert_eq!(got, expect);
        }
        assert_eq!(
            seen[2],
            Seen::Other {
                kind: 0,
                stream: 1,
                payload: vec![0; 5]
            }
        );
    }
}

#[test]
fn a_valid_authority_is_kept() {
    for good in [
        &b"localhost"[..],
        b"hull.sock",
        b"[::]:50051",
        b"127.0.0.1:1",
    ] {
        let (out, r) = rewrite(&client_bytes(good));
        assert_eq!(r.replaced, 0);
        assert_eq!(authority(&parse_server_side(&out)[1]), good);
    }
}

#[test]
fn byte_by_byte_gives_the_same_stream() {
    let input = client_bytes(b"/run/hull/hull.sock");
    let (whole, _) = rewrite(&input);
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    for b in &input {
        r.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    assert_eq!(out, whole);
}

#[test]
fn padding_priority_and_continuations_are_handled() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut fields = call(b"/x.sock");
    fields.push((b"big".to_vec(), vec![b'v'; 40_000]));
    let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
    let mut input = PREFACE.to_vec();
    // HEADERS: padded (3 bytes) with a priority, the block split over two CONTINUATIONs.
    let mut first = vec![3u8, 0, 0, 0, 0, 16];
    first.extend_from_slice(&block[..100]);
    first.extend_from_slice(&[0, 0, 0]);
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &first));
    input.extend(frame(CONTINUATION, 0, 5, &block[100..20_000]));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[20_000..]));
    let (out, r) = rewrite(&input);
    assert_eq!(r.replaced, 1);
    let seen = parse_server_side(&out);
    assert_eq!(seen.len(), 1);
    let Seen::Headers {
        stream,
        flags,
        fields: got,
    } = &seen[0]
    else {
        panic!("{seen:?}")
    };
    assert_eq!((*stream, *flags), (5, END_STREAM | PRIORITY));
    assert_eq!(got.len(), fields.len());
    assert_eq!(got.last().unwrap().1.len(), 40_000);
}

#[test]
fn not_http2_goes_through_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: /run/hull.sock\r\n\r\n";
    let (out, r) = rewrite(input);
    assert_eq!(out, input);
    assert_eq!(r.replaced, 0);
}

#[test]
fn broken_or_hostile_blocks_end_the_connection() {
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    let mut bad = PREFACE.to_vec();
    bad.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
    assert!(matches!(
        r.feed(&bad, &mut out),
        Err(AuthorityError::Hpack { stream: 1, .. })
    ));

    // One 4 KiB dynamic-table entry, then a block that names it 300 times (~1.2 MiB).
    let mut encoder = loona_hpack::Encoder::new();
    let big = vec![b'x'; 4000];
    let first = encoder.encode([(&b"x-big"[..], &big[..])]);
    let mut bomb = PREFACE.to_vec();
    bomb.extend(frame(HEADERS, END_HEADERS, 1, &first));
    bomb.extend(frame(HEADERS, END_HEADERS, 3, &[0xbe; 300]));
    let mut r = Rewriter::default();
    assert!(matches!(
        r.feed(&bomb, &mut Vec::new()),
        Err(AuthorityError::ListTooLarge(3))
    ));

    let mut interleaved = PREFACE.to_vec();
    interleaved.extend(frame(HEADERS, 0, 1, &[0x82]));
    interleaved.extend(frame(0x0, 0, 1, &[]));
    assert!(matches!(
        Rewriter::default().feed(&interleaved, &mut Vec::new()),
        Err(AuthorityError::Interleaved(1))
    ));

    let mut stray = PREFACE.to_vec();
    stray.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
    assert!(matches!(
        Rewriter::default().feed(&stray, &mut Vec::new()),
        Err(AuthorityError::StrayContinuation(1))
    ));

    let mut padding = PREFACE.to_vec();
    padding.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]));
    assert!(matches!(
        Rewriter::default().feed(&padding, &mut Vec::new()),
        Err(AuthorityError::BadPadding(1))
    ));

    let mut huge = PREFACE.to_vec();
    frame_head(MAX_BLOCK + 4096, HEADERS, 0, 1, &mut huge);
    assert!(matches!(
        Rewriter::default().feed(&huge, &mut Vec::new()),
        Err(AuthorityError::BlockTooLarge(1))
    ));
}

#[test]
fn integers_encode_per_rfc7541() {
    // RFC 7541 C.1.1-C.1.3.
    let mut out = Vec::new();
    encode_int(10, 5, 0, &mut out);
    assert_eq!(out, [10]);
    out.clear();
    encode_int(1337, 5, 0, &mut out);
    assert_eq!(out, [31, 154, 10]);
    out.clear();
    encode_int(42, 8, 0, &mut out);
    assert_eq!(out, [42]);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever a client sends after the preface, the rewriter returns an error or
        /// bytes, never panics; and cutting the input anywhere changes nothing.
        #[test]
        fn random_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
            let mut input = PREFACE.to_vec();
            input.extend_from_slice(&body);
            let mut whole = Vec::new();
            let a = Rewriter::default().feed(&input, &mut whole).is_ok();
            let cut = cut.min(input.len());
            let mut r = Rewriter::default();
            let mut split = Vec::new();
            let b = r.feed(&input[..cut], &mut split).and_then(|()| r.feed(&input[cut..], &mut split)).is_ok();
            prop_assert_eq!(a, b);
            if a {
                prop_assert_eq!(whole, split);
            }
        }

        /// Any header block a real encoder makes, with any authority, decodes on the h2
        /// side to the same fields, the authority valid.
        #[test]
        fn any_authority_reaches_h2_valid(auth in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (out, _) = rewrite(&client_bytes(&auth));
            let seen = parse_server_side(&out);
            let got = authority(&seen[1]);
            prop_assert!(Authority::try_from(got.as_slice()).is_ok());
            if Authority::try_from(auth.as_slice()).is_ok() {
                prop_assert_eq!(got, auth);
            }
        }
    }
}
