//! Layer extraction keeps ownership, modes, xattrs, hardlinks, symlinks, devices, mtimes,
//! and enforces its size and entry limits. Needs root (chown, mknod).

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

use hull_image::content::Digest;
use hull_image::unpack::{Compression, Limits, extract};

const LIMITS: Limits = Limits {
    max_bytes: 1 << 30,
    max_entries: 1000,
};

fn header(kind: tar::EntryType, size: u64, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid + 1);
    h.set_mtime(1_600_000_000);
    h
}

fn rich_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0, 0o750, 1000);
    b.append_data(&mut h, "dir/", &[][..]).expect("build tar");
    b.append_pax_extensions([("SCHILY.xattr.user.hull", &b"v1"[..])])
        .expect("build tar");
    let mut h = header(tar::EntryType::Regular, 5, 0o4755, 1000);
    b.append_data(&mut h, "dir/suid", &b"hello"[..])
        .expect("build tar");
    let mut h = header(tar::EntryType::Link, 0, 0o644, 0);
    b.append_link(&mut h, "dir/hard", "dir/suid")
        .expect("build tar");
    let mut h = header(tar::EntryType::Symlink, 0, 0o777, 0);
    b.append_link(&mut h, "dir/abs-link", "/etc/passwd")
        .expect("build tar");
    let mut h = header(tar::EntryType::Char, 0, 0o666, 0);
    h.set_device_major(1).expect("build tar");
    h.set_device_minor(3).expect("build tar");
    b.append_data(&mut h, "dev-null", &[][..])
        .expect("build tar");
    let mut h = header(tar::EntryType::Fifo, 0, 0o600, 0);
    b.append_data(&mut h, "fifo", &[][..]).expect("build tar");
    // A later entry replaces an earlier one.
    let mut h = header(tar::EntryType::Regular, 3, 0o644, 0);
    b.append_data(&mut h, "twice", &b"one"[..])
        .expect("build tar");
    let mut h = header(tar::EntryType::Regular, 3, 0o600, 0);
    b.append_data(&mut h, "twice", &b"two"[..])
        .expect("build tar");
    b.into_inner().expect("build tar")
}

#[test]
fn extraction_preserves_metadata() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root (chown, mknod)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let tar = rich_layer();
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, &tar).unwrap();
    let dest = tmp.path().join("fs");
    std::fs::create_dir(&dest).unwrap();
    let n = extract(&blob, Compression::None, &dest, &Digest::of(&tar), LIMITS).unwrap();
    assert_eq!(n, tar.len() as u64);

    let dir = std::fs::symlink_metadata(dest.join("dir")).unwrap();
    assert_eq!(
        (dir.mode() & 0o7777, dir.uid(), dir.gid()),
        (0o750, 1000, 1001)
    );
    assert_eq!(
        dir.mtime(),
        1_600_000_000,
        "dir mtime set after its children"
    );
    let suid = std::fs::symlink_metadata(dest.join("dir/suid")).unwrap();
    assert_eq!(
        (suid.mode() & 0o7777, suid.uid(), suid.gid()),
        (0o4755, 1000, 1001),
        "setuid kept after chown"
    );
    assert_eq!(
        xattr::get(dest.join("dir/suid"), "user.hull")
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    let hard = std::fs::symlink_metadata(dest.join("dir/hard")).unwrap();
    assert_eq!(hard.ino(), suid.ino());
    assert_eq!(
        std::fs::read_link(dest.join("dir/abs-link"))
            .unwrap()
            .to_str(),
        Some("/etc/passwd")
    );
    let dev = std::fs::symlink_metadata(dest.join("dev-null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(
        std::fs::symlink_metadata(dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(std::fs::read(dest.join("twice")).unwrap(), b"two");
}

#[test]
fn wrong_diff_id_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = rich_layer();
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, &tar).unwrap();
    let run = |limits: Limits, diff: &Digest| {
        let dest = tempfile::tempdir_in(tmp.path()).unwrap();
        extract(&blob, Compression::None, dest.path(), diff, limits).unwrap_err()
    };
    let err = run(LIMITS, &Digest::of(b"other"));
    assert!(
        matches!(err, hull_image::ImageError::DigestMismatch { .. }),
        "{err:?}"
    );
    let err = run(
        Limits {
            max_bytes: 1024,
            max_entries: 1000,
        },
        &Digest::of(&tar),
    );
    assert!(
        matches!(err, hull_image::ImageError::SizeLimit { .. }),
        "{err:?}"
    );
    let err = run(
        Limits {
            max_bytes: 1 << 30,
            max_entries: 2,
        },
        &Digest::of(&tar),
    );
    assert!(
        matches!(err, hull_image::ImageError::SizeLimit { .. }),
        "{err:?}"
    );
    let garbage = tmp.path().join("garbage");
    std::fs::write(&garbage, b"not gzip at all").unwrap();
    let dest = tempfile::tempdir_in(tmp.path()).unwrap();
    let err = extract(
        &garbage,
        Compression::Gzip,
        dest.path(),
        &Digest::of(b""),
        LIMITS,
    )
    .unwrap_err();
    assert!(
        matches!(err, hull_image::ImageError::ReadLayer { .. }),
        "{err:?}"
    );
}

/// A layer of `dir/`, `dir/a` (700 bytes) and `b` (3 bytes), and where `b`'s data ends.
fn two_file_layer() -> (Vec<u8>, usize) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0, 0o755, 0);
    b.append_data(&mut h, "dir/", &[][..]).expect("build tar");
    let mut h = header(tar::EntryType::Regular, 700, 0o644, 0);
    b.append_data(&mut h, "dir/a", &[7u8; 700][..])
        .expect("build tar");
    let mut h = header(tar::EntryType::Regular, 3, 0o644, 0);
    b.append_data(&mut h, "b", &b"end"[..]).expect("build tar");
    let tar = b.into_inner().expect("build tar");
    // dir header, a's header + 2 blocks of data, b's header, then b's 3 bytes.
    (tar, 512 + 512 + 1024 + 512 + 3)
}

fn extract_bytes(tar: &[u8]) -> (tempfile::TempDir, hull_image::Result<u64>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, tar).expect("write blob");
    let dest = tmp.path().join("fs");
    std::fs::create_dir(&dest).expect("create dest");
    let r = extract(&blob, Compression::None, &dest, &Digest::of(tar), LIMITS);
    (tmp, r)
}

#[test]
fn a_stream_ending_after_the_last_entrys_data_is_a_whole_layer() {
    let (tar, data_end) = two_file_layer();
    // Go's archive/tar (containerd) takes these: no end-of-archive blocks, no padding,
    // part of the padding.
    for end in [data_end + 509, data_end + 100, data_end] {
        let (tmp, r) = extract_bytes(&tar[..end]);
        assert_eq!(r.expect("accepted"), end as u64, "cut at {end}");
        let fs = tmp.path().join("fs");
        assert_eq!(std::fs::read(fs.join("b")).unwrap(), b"end", "cut at {end}");
        assert_eq!(std::fs::read(fs.join("dir/a")).unwrap(), [7u8; 700]);
    }
}

#[test]
fn a_stream_cut_inside_data_or_a_header_is_refused() {
    let (tar, data_end) = two_file_layer();
    // Inside b's data, inside a's data (at a block boundary and not), inside b's header.
    for end in [
        data_end - 1,
        512 + 512 + 512,
        512 + 512 + 600,
        data_end - 3 - 100,
    ] {
        let (_tmp, r) = extract_bytes(&tar[..end]);
        let err = r.expect_err(&format!("cut at {end} refused"));
        assert!(
            matches!(err, hull_image::ImageError::ReadLayer { .. }),
            "cut at {end}: {err:?}"
        );
    }
}
