use super::dictionary::DICTIONARY;
use super::frame::{Codec, Frame, FrameError, Prefix, header};

fn roundtrip(tx: &mut Codec, rx: &mut Codec, f: &Frame) -> Frame {
    let bytes = tx.encode(f).expect("encode");
    let prefix: [u8; 8] = bytes[..8].try_into().expect("prefix");
    let p = Prefix::parse(&prefix);
    assert_eq!(p.length, bytes.len() - 8);
    rx.decode(p, &bytes[8..]).expect("decode")
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_dictionary_is_the_spdy3_one() {
    assert_eq!(DICTIONARY.len(), 1423);
    assert!(DICTIONARY.starts_with(b"\0\0\0\x07options"));
    assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
}

#[test]
fn header_blocks_share_one_compression_context_per_direction() {
    let (mut client, mut server) = (Codec::new(), Codec::new());
    for (i, kind) in ["error", "stdin", "stdout", "stderr", "resize"]
        .iter()
        .enumerate()
    {
        let f = Frame::SynStream {
            stream: 1 + 2 * i as u32,
            fin: false,
            headers: h(&[("streamType", kind), ("port", "80")]),
        };
        let Frame::SynStream {
            stream, headers, ..
        } = roundtrip(&mut client, &mut server, &f)
        else {
            panic!("not a SYN_STREAM");
        };
        assert_eq!(stream, 1 + 2 * i as u32);
        // Names are lower-cased on the wire.
        assert_eq!(header(&headers, "streamtype"), Some(*kind));
        assert_eq!(header(&headers, "PORT"), Some("80"));
    }
    let reply = Frame::SynReply {
        stream: 3,
        fin: false,
        headers: Vec::new(),
    };
    assert_eq!(roundtrip(&mut server, &mut client, &reply), reply);
}

#[test]
fn data_ping_rst_goaway_roundtrip() {
    let (mut a, mut b) = (Codec::new(), Codec::new());
    let frames = [
        Frame::Data {
            stream: 5,
            fin: true,
            data: b"hello".to_vec(),
        },
        Frame::Data {
            stream: 7,
            fin: false,
            data: vec![0xab; 70_000],
        },
        Frame::Ping(9),
        Frame::RstStream {
            stream: 3,
            status: 5,
        },
        Frame::GoAway {
            last_stream: 0,
            status: 0,
        },
    ];
    for f in frames {
        assert_eq!(roundtrip(&mut a, &mut b, &f), f);
    }
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let mut c = Codec::new();
    // A control frame of another SPDY version.
    let p = Prefix::parse(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]);
    assert!(matches!(c.decode(p, &[]), Err(FrameError::Version(2))));
    // SYN_STREAM too short for its fixed fields.
    let p = Prefix::parse(&[0x80, 0x03, 0, 1, 0, 0, 0, 2]);
    assert!(c.decode(p, &[0, 1]).is_err());
    // A header block that is not zlib.
    let mut c = Codec::new();
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(b"definitely not zlib");
    let p = Prefix::parse(&[0x80, 0x03, 0, 1, 0, 0, 0, payload.len() as u8]);
    assert!(c.decode(p, &payload).is_err());
    // RST_STREAM without a status.
    let p = Prefix::parse(&[0x80, 0x03, 0, 3, 0, 0, 0, 4]);
    assert!(c.decode(p, &[0, 0, 0, 1]).is_err());
    // Unknown and flow-control frames are skipped.
    let p = Prefix::parse(&[0x80, 0x03, 0, 9, 0, 0, 0, 8]);
    assert_eq!(
        c.decode(p, &[0; 8]).expect("window update"),
        Frame::Ignored(9)
    );
    let p = Prefix::parse(&[0x80, 0x03, 0, 42, 0, 0, 0, 0]);
    assert_eq!(c.decode(p, &[]).expect("unknown"), Frame::Ignored(42));
}

#[test]
fn header_block_counts_are_bounded() {
    // A header block claiming a billion headers must not allocate for them.
    let mut tx = flate2::Compress::new(flate2::Compression::default(), true);
    tx.set_dictionary(DICTIONARY).expect("dictionary");
    let raw = 1_000_000_000u32.to_be_bytes();
    let mut z = Vec::with_capacity(128);
    tx.compress_vec(&raw, &mut z, flate2::FlushCompress::Sync)
        .expect("compress");
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    payload.extend(z);
    let mut c = Codec::new();
    let p = Prefix::parse(&[0x80, 0x03, 0, 1, 0, 0, 0, payload.len() as u8]);
    assert!(matches!(
        c.decode(p, &payload),
        Err(FrameError::HeaderBlock)
    ));
}
