//! `/proc/self/mountinfo` fields, read by both sides: the agent (is the share mounted?) and
//! hulld (submounts under a volume on the host).

/// Unescapes a mountinfo path field: the kernel writes space, tab, newline and `\` as
/// `\ooo` octal escapes. Anything else, an escape above `\377` included, stays as it is.
/// Lossy for non-UTF-8 names: code that acts on the paths uses [`entries`].
pub fn unescape(field: &str) -> String {
    String::from_utf8_lossy(&unescape_bytes(field.as_bytes())).into_owned()
}

/// [`unescape`] on raw bytes: a path on Linux is bytes, and a guest can name a directory
/// holding a mount with any of them.
pub fn unescape_bytes(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|o| field[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|o| {
                let v = u16::from(o[0] - b'0') * 64
                    + u16::from(o[1] - b'0') * 8
                    + u16::from(o[2] - b'0');
                u8::try_from(v).ok()
            });
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The mount point (5th field) of each line of `mountinfo`, unescaped (lossy: see
/// [`entries`] for the exact bytes).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
}

/// One line of mountinfo: the mount point's exact bytes and the per-mount options
/// (6th field, e.g. `ro,nosuid,nodev,relatime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub point: Vec<u8>,
    pub options: String,
}

/// Every line of `mountinfo` (the raw bytes of /proc/self/mountinfo), never lossy: a
/// guest-chosen non-UTF-8 name must not hide a mount from the code that unmounts it.
pub fn entries(mountinfo: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    mountinfo.split(|b| *b == b'\n').filter_map(|line| {
        let mut fields = line.split(|b| *b == b' ').skip(4);
        let point = unescape_bytes(fields.next()?);
        let options = String::from_utf8_lossy(fields.next()?).into_owned();
        Some(Entry { point, options })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone_and_anything_else_kept() {
        assert_eq!(unescape("/a\\040b\\011c\\134d\\012e"), "/a b\tc\\d\ne");
        assert_eq!(unescape("/a\\9b\\04"), "/a\\9b\\04");
        assert_eq!(unescape("/a\\777"), "/a\\777", "above \\377 is no byte");
    }

    #[test]
    fn mount_points_are_the_fifth_field() {
        let info = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:5 / /run/a\\040b rw shared:7 - tmpfs t rw\n\
                    short line\n";
        assert_eq!(mount_points(info).collect::<Vec<_>>(), ["/", "/run/a b"]);
    }

    #[test]
    fn entries_keep_non_utf8_bytes_and_the_options() {
        let mut info = b"22 1 8:1 / / rw - ext4 /dev/vda rw\n40 22 0:5 / /run/".to_vec();
        info.extend_from_slice(b"\xff\xfe\\040x ro,nosuid shared:7 - tmpfs t rw\nshort\n");
        let got: Vec<Entry> = entries(&info).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].point, b"/run/\xff\xfe x");
        assert_eq!(got[1].options, "ro,nosuid");
        assert_eq!(unescape_bytes(b"\\777\\1"), b"\\777\\1");
    }
}
