//! Property tests of the layer-tar reader (`unpack::extract`), run by `cargo test` with a
//! fixed number of cases and a fixed seed, so CI spends a bounded, repeatable time on them
//! (a few seconds). Two properties:
//!
//! - **cuts**: a well-formed archive cut at any byte is either a whole archive (cut after
//!   an entry's data: padding and end-of-archive blocks may be missing, as Go's
//!   `archive/tar` allows) and then exactly the entries before the cut are extracted with
//!   their contents, or it is refused with `ReadLayer` (cut inside data or a header);
//! - **hostile bytes**: an archive with hostile names (`..`, absolute paths, symlinks out)
//!   and random bytes flipped or spliced in never panics, and never writes outside the
//!   layer's directory.
//!
//! Needs root (extraction chowns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use hull_image::content::Digest;
use hull_image::unpack::{Compression, Limits, extract};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRng, TestRunner};

const LIMITS: Limits = Limits {
    max_bytes: 1 << 24,
    max_entries: 200,
};

/// Cases per property: about 2-4 s each on a loaded 2-core machine.
const CASES: u32 = 300;

fn runner() -> TestRunner {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6875_6c6c),
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// Entries with unique short names (no long-name extension headers), files of 0-1500 bytes.
fn entries() -> impl Strategy<Value = Vec<Kind>> {
    let kind = prop_oneof![
        Just(Kind::Dir),
        proptest::collection::vec(any::<u8>(), 0..1500).prop_map(Kind::File),
        "[a-z]{1,8}".prop_map(Kind::Symlink),
    ];
    proptest::collection::vec(kind, 1..8)
}

/// Where an entry sits in the stream.
#[derive(Debug, Clone, Copy)]
struct Span {
    data_end: usize,
    padded_end: usize,
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h
}

fn name(i: usize, kind: &Kind) -> String {
    match kind {
        Kind::Dir => format!("d{i}"),
        Kind::File(_) => format!("f{i}"),
        Kind::Symlink(_) => format!("l{i}"),
    }
}

fn build(entries: &[Kind]) -> (Vec<u8>, Vec<Span>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut spans = Vec::new();
    for (i, kind) in entries.iter().enumerate() {
        let start = b.get_ref().len();
        let n = name(i, kind);
        let len = match kind {
            Kind::Dir => {
                b.append_data(&mut header(tar::EntryType::Directory, 0), n, &[][..])
                    .unwrap();
                0
            }
            Kind::File(data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64);
                b.append_data(&mut h, n, &data[..]).unwrap();
                data.len()
            }
            Kind::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0);
                b.append_link(&mut h, n, target).unwrap();
                0
            }
        };
        let data_end = start + 512 + len;
        spans.push(Span {
            data_end,
            padded_end: start + 512 + len.div_ceil(512) * 512,
        });
        assert_eq!(b.get_ref().len(), spans[i].padded_end);
    }
    (b.into_inner().unwrap(), spans)
}

struct Run {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    result: hull_image::Result<u64>,
}

fn run(bytes: &[u8], diff_id: &Digest) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::write(root.join("blob"), bytes).unwrap();
    std::fs::create_dir(root.join("fs")).unwrap();
    std::fs::create_dir(root.join("outside")).unwrap();
    let result = extract(
        &root.join("blob"),
        Compression::None,
        &root.join("fs"),
        diff_id,
        LIMITS,
    );
    Run {
        _tmp: tmp,
        root,
        result,
    }
}

/// Whether the cut at `cut` leaves a whole archive, and how many entries it holds.
fn expected(cut: usize, spans: &[Span]) -> Option<usize> {
    if cut == 0 {
        return Some(0);
    }
    let last = spans.last().unwrap();
    // The first end-of-archive block whole: the reader stops there.
    if cut >= last.padded_end + 512 {
        return Some(spans.len());
    }
    spans
        .iter()
        .position(|s| (s.data_end..=s.padded_end).contains(&cut))
        .map(|i| i + 1)
}

fn check_cut(entries: &[Kind], cut_at: prop::sample::Index) -> Result<(), TestCaseError> {
    let (tar, spans) = build(entries);
    let cut = cut_at.index(tar.len() + 1);
    let bytes = &tar[..cut];
    let r = run(bytes, &Digest::of(bytes));
    match (expected(cut, &spans), &r.result) {
        (Some(n), Ok(size)) => {
            prop_assert_eq!(*size, cut as u64);
            let fs = r.root.join("fs");
            for (i, kind) in entries.iter().enumerate() {
                let path = fs.join(name(i, kind));
                let there = std::fs::symlink_metadata(&path).is_ok();
                prop_assert_eq!(there, i < n, "entry {} of {} after a cut at {}", i, n, cut);
                if let (true, Kind::File(data)) = (there, kind) {
                    prop_assert_eq!(&std::fs::read(&path).unwrap(), data);
                }
                if let (true, Kind::Symlink(target)) = (there, kind) {
                    prop_assert_eq!(std::fs::read_link(&path).unwrap(), Path::new(target));
                }
            }
        }
        (None, Err(hull_image::ImageError::ReadLayer { .. })) => {}
        (want, got) => {
            return Err(TestCaseError::fail(format!(
                "cut at {cut} of {}: expected {want:?} entries, got {got:?}",
                tar.len()
            )));
        }
    }
    Ok(())
}

#[test]
fn cut_archives_are_whole_or_refused() {
    runner()
        .run(
            &(entries(), any::<prop::sample::Index>()),
            |(entries, cut)| check_cut(&entries, cut),
        )
        .unwrap();
}

/// Entries that try to leave the layer (kind, name, link target, data), and harmless ones.
/// (kind, name, link target, data) of one raw entry.
type RawEntry = (tar::EntryType, &'static [u8], &'static [u8], &'static [u8]);

const HOSTILE: &[RawEntry] = &[
    (tar::EntryType::Regular, b"../outside/dotdot", b"", b"x"),
    (tar::EntryType::Regular, b"/outside/abs", b"", b"x"),
    (tar::EntryType::Symlink, b"up", b"../outside", b""),
    (tar::EntryType::Regular, b"up/through-link", b"", b"x"),
    (tar::EntryType::Symlink, b"abs", b"/", b""),
    (tar::EntryType::Regular, b"abs/tmp/x", b"", b"x"),
    (tar::EntryType::Link, b"hard", b"../outside/x", b""),
    (tar::EntryType::Directory, b"dir/", b"", b""),
    (tar::EntryType::Regular, b"dir/../../outside/y", b"", b"x"),
    (tar::EntryType::Regular, b"dir/ok", b"", b"fine"),
    (tar::EntryType::Symlink, b"dir/sub", b"..", b""),
    (tar::EntryType::Regular, b"dir/sub/sub/z", b"", b"x"),
];

/// The [`HOSTILE`] entries at `picks`, in that order, as an archive.
fn hostile_layer(picks: &[usize]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for &i in picks {
        let (kind, path, link, data) = HOSTILE[i];
        let mut h = header(kind, data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn picks() -> impl Strategy<Value = Vec<usize>> {
    let all: Vec<usize> = (0..HOSTILE.len()).collect();
    prop::sample::subsequence(all, 1..=HOSTILE.len()).prop_shuffle()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        byte: u8,
    },
    Splice {
        at: prop::sample::Index,
        bytes: Vec<u8>,
    },
    Cut(prop::sample::Index),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let m = prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        1 => (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..600))
            .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Cut),
    ];
    proptest::collection::vec(m, 0..6)
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match m {
            Mutation::Flip { at, byte } => {
                let i = at.index(bytes.len());
                bytes[i] ^= byte | 1;
            }
            Mutation::Splice { at, bytes: b } => {
                let i = at.index(bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Cut(at) => bytes.truncate(at.index(bytes.len())),
        }
    }
    bytes
}

#[test]
fn hostile_and_mangled_archives_never_escape_or_panic() {
    runner()
        .run(&(picks(), mutations()), |(picks, muts)| {
            let bytes = mutate(hostile_layer(&picks), &muts);
            let r = run(&bytes, &Digest::of(&bytes));
            let outside: Vec<_> = std::fs::read_dir(r.root.join("outside"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            prop_assert!(outside.is_empty(), "wrote outside the layer: {:?}", outside);
            let mut top: Vec<_> = std::fs::read_dir(&r.root)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            top.sort();
            prop_assert_eq!(top, vec!["blob", "fs", "outside"]);
            Ok(())
        })
        .unwrap();
}
