//! Where a container's log continues after a hulld restart.
//!
//! The last [`LogCheckpoint`] says that the log file (inode `ino`) was `log_len` bytes long
//! and held every byte of each stream before its offset. Whatever the old hulld wrote
//! after that checkpoint is in the file past `log_len`: each complete line there is
//! counted back into output bytes (an `F` line is its content plus the newline, a `P`
//! line its content alone), and a line torn by the crash is cut off (it is read again).
//! The result is exact: no byte is lost (the agent still holds it, unless its buffer
//! overflowed meanwhile, which the writer logs as a gap) and none is written twice.
//!
//! Only when the checkpointed file is no longer at the log path (kubelet rotated it and
//! the reopen never reached the old hulld) are the checkpoint's offsets used as they
//! are: lines written between that checkpoint and the crash are then repeated (at least
//! once). Without any checkpoint (a container started by an older hulld) the whole file
//! is counted, which is exact unless it was rotated.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::LogCheckpoint;

/// The offsets each stream continues from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    pub stdout: u64,
    pub stderr: u64,
}

/// What [`resume`] found, for the restart log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The checkpointed file plus its complete lines past the checkpoint.
    Exact { lines_after: u64, torn_bytes: u64 },
    /// The checkpointed file is gone from the path: the checkpoint alone.
    Rotated,
    /// No log file at all.
    NoFile,
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("Cannot read the container log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot cut the torn last line of {path}")]
    Truncate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The offsets to resume the log at `path` from, given its last checkpoint.
pub fn resume(
    path: &Path,
    checkpoint: Option<LogCheckpoint>,
) -> Result<(Resume, Basis), ResumeError> {
    let read_err = |source| ResumeError::Read {
        path: path.to_owned(),
        source,
    };
    let base = checkpoint.unwrap_or_default();
    let mut at = Resume {
        stdout: base.stdout,
        stderr: base.stderr,
    };
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((at, Basis::NoFile)),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let start = match checkpoint {
        Some(c) if c.ino == meta.ino() && c.log_len <= meta.len() => c.log_len,
        Some(_) => return Ok((at, Basis::Rotated)),
        None => 0,
    };
    let (lines_after, complete_end) = count_lines(&file, start, &mut at).map_err(read_err)?;
    let torn_bytes = meta.len() - complete_end;
    if torn_bytes > 0 {
        file.set_len(complete_end)
            .map_err(|source| ResumeError::Truncate {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok((
        at,
        Basis::Exact {
            lines_after,
            torn_bytes,
        },
    ))
}

/// Adds the output bytes of every complete line from `start` on to `at`; returns the line
/// count and the file offset after the last complete line.
fn count_lines(file: &File, start: u64, at: &mut Resume) -> std::io::Result<(u64, u64)> {
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(start))?;
    let (mut lines, mut pos) = (0u64, start);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok((lines, pos));
        }
        pos += n as u64;
        lines += 1;
        match output_bytes(&line[..n - 1]) {
            Some((super::Stream::Stdout, b)) => at.stdout += b,
            Some((super::Stream::Stderr, b)) => at.stderr += b,
            None => tracing::warn!(line = %String::from_utf8_lossy(&line), "not a CRI log line"),
        }
    }
}

/// The stream and output bytes a CRI log line (without its `\n`) stands for.
fn output_bytes(line: &[u8]) -> Option<(super::Stream, u64)> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _ts = parts.next()?;
    let stream = match parts.next()? {
        b"stdout" => super::Stream::Stdout,
        b"stderr" => super::Stream::Stderr,
        _ => return None,
    };
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default().len() as u64;
    match tag {
        b"F" => Some((stream, content + 1)),
        b"P" => Some((stream, content)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt(path: &Path, stdout: u64, stderr: u64) -> LogCheckpoint {
        let m = std::fs::metadata(path).expect("meta");
        LogCheckpoint {
            ino: m.ino(),
            log_len: m.len(),
            stdout,
            stderr,
        }
    }

    #[test]
    fn counts_lines_after_the_checkpoint_and_cuts_a_torn_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, "T stdout F one\n").expect("write");
        let c = ckpt(&path, 4, 0);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        std::io::Write::write_all(
            &mut f,
            b"T stdout P ab\nT stdout F cd\nT stderr F \nT stdout F torn",
        )
        .expect("append");
        let (at, basis) = resume(&path, Some(c)).expect("resume");
        // "ab" + "cd\n" on stdout, "\n" on stderr.
        assert_eq!(
            at,
            Resume {
                stdout: 4 + 5,
                stderr: 1
            }
        );
        assert_eq!(
            basis,
            Basis::Exact {
                lines_after: 3,
                torn_bytes: 15
            }
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with("T stderr F \n"), "{text:?}");
    }

    #[test]
    fn without_a_checkpoint_the_whole_file_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, "T stdout F 12345\nT stderr F x y z\n").expect("write");
        let (at, _) = resume(&path, None).expect("resume");
        assert_eq!(
            at,
            Resume {
                stdout: 6,
                stderr: 6
            }
        );
        let (at, basis) = resume(&dir.path().join("none"), None).expect("resume");
        assert_eq!((at, basis), (Resume::default(), Basis::NoFile));
    }

    #[test]
    fn a_rotated_file_falls_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, "T stdout F a\n").expect("write");
        let c = ckpt(&path, 2, 0);
        std::fs::rename(&path, dir.path().join("0.log.1")).expect("rename");
        std::fs::write(&path, "").expect("new file");
        let (at, basis) = resume(&path, Some(c)).expect("resume");
        assert_eq!(
            (at, basis),
            (
                Resume {
                    stdout: 2,
                    stderr: 0
                },
                Basis::Rotated
            )
        );
    }
}
