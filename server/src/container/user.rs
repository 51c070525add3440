//! `/etc/passwd` and `/etc/group` lookups in a container's rootfs (on the host), the way
//! runc's `user.GetExecUser` resolves an OCI user string.

use std::path::Path;

/// A resolved user: uid, primary gid, and the gids of the groups listing it as a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The user's name when /etc/passwd knows it.
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("User {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("Group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("User or group id {0:?} is out of range")]
    BadId(String),
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Largest /etc/passwd or /etc/group hulld reads.
const MAX_ETC_FILE: u64 = 16 * 1024 * 1024;

/// Reads `/etc/<name>` of the rootfs as the container will see it (symlinks resolved inside
/// the rootfs, never the host's): a missing or odd file reads as empty (images without
/// /etc/passwd are common).
fn read_etc(rootfs: &Path, name: &str) -> String {
    let Ok(root) = super::inroot::RootDir::open(rootfs) else {
        return String::new();
    };
    root.read_small(&Path::new("etc").join(name), MAX_ETC_FILE)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_etc(rootfs, "passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && !l.starts_with('#')).then_some(())?;
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<GroupEntry> {
    read_etc(rootfs, "group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && !l.starts_with('#')).then_some(())?;
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_id(s: &str) -> Result<u32, UserError> {
    s.parse::<u32>().map_err(|_| UserError::BadId(s.to_owned()))
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves `user[:group]` (names or numbers; empty means root) against the rootfs.
/// A numeric user unknown to /etc/passwd is allowed (gid 0 then); a name must exist.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<ExecUser, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(rootfs);
    let entry = if user.is_empty() {
        users.iter().find(|e| e.uid == 0)
    } else if is_numeric(user) {
        let uid = parse_id(user)?;
        users.iter().find(|e| e.uid == uid)
    } else {
        Some(
            users
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| UserError::UnknownUser(user.to_owned()))?,
        )
    };
    let uid = match (entry, user) {
        (Some(e), _) => e.uid,
        (None, "") => 0,
        (None, u) => parse_id(u)?,
    };
    let mut out = ExecUser {
        uid,
        gid: entry.map_or(0, |e| e.gid),
        additional_gids: Vec::new(),
        name: entry.map(|e| e.name.clone()),
    };
    let all_groups = groups(rootfs);
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        out.gid = if is_numeric(g) {
            parse_id(g)?
        } else {
            all_groups
                .iter()
                .find(|e| e.name == g)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?
                .gid
        };
    }
    if let Some(name) = &out.name {
        out.additional_gids = all_groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .collect();
    }
    Ok(out)
}

/// The gid /etc/passwd gives `uid`, if any.
pub fn primary_gid(rootfs: &Path, uid: u32) -> Option<u32> {
    passwd(rootfs)
        .into_iter()
        .find(|e| e.uid == uid)
        .map(|e| e.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbad line\nwww:x:33:44::/:/bin/false\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww-data:x:44:\nstaff:x:50:www,nobody\naudio:x:29:www\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn names_numbers_and_groups() {
        let r = rootfs();
        let p = r.path();
        let root = resolve(p, "").expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        let www = resolve(p, "www").expect("www");
        assert_eq!(
            (www.uid, www.gid, www.additional_gids.clone()),
            (33, 44, vec![50, 29])
        );
        assert_eq!(resolve(p, "33").expect("33"), www);
        let u = resolve(p, "www:staff").expect("www:staff");
        assert_eq!(u.gid, 50);
        let n = resolve(p, "1234:5678").expect("numeric");
        assert_eq!((n.uid, n.gid, n.additional_gids.len()), (1234, 5678, 0));
        assert_eq!(resolve(p, "1234").expect("numeric").gid, 0);
        assert_eq!(
            resolve(p, "ghost"),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve(p, "www:ghost"),
            Err(UserError::UnknownGroup("ghost".into()))
        );
        assert!(matches!(
            resolve(p, "99999999999"),
            Err(UserError::BadId(_))
        ));
        assert_eq!(primary_gid(p, 65534), Some(65534));
        assert_eq!(primary_gid(p, 7), None);
    }

    #[test]
    fn missing_files_mean_numeric_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(resolve(dir.path(), "5").expect("5").uid, 5);
        assert!(resolve(dir.path(), "www").is_err());
    }
}
