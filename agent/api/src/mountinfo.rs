//! `/proc/self/mountinfo` fields, read by both sides: the agent (is the share mounted?) and
//! hulld (submounts under a volume on the host).

/// Unescapes a mountinfo path field: the kernel writes space, tab, newline and `\` as
/// `\ooo` octal escapes. Anything else, an escape above `\377` included, stays as it is.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|o| bytes[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point (5th field) of each line of `mountinfo`, unescaped.
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
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
}
