//! The CRI log line format: `<RFC3339Nano timestamp> <stream> <P|F> <content>\n`.
//!
//! kubelet (`pkg/kubelet/kuberuntime/logs`) parses these files for `kubectl logs`; a line
//! longer than the bound, or left unterminated when the stream ends, is written as one or
//! more `P` (partial) lines followed by nothing or an `F` line, exactly like containerd's
//! `redirectLogs`. Content is written byte for byte (binary data passes through).

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Formats Unix nanoseconds as Go's `time.RFC3339Nano` in UTC (trailing zeros of the
/// fraction trimmed, no fraction at all when it is zero).
pub fn rfc3339_nano(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Appends one log line to `out`.
pub fn push_line(out: &mut Vec<u8>, ts: &str, stream: Stream, full: bool, content: &[u8]) {
    out.reserve(ts.len() + content.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Splits one stream's bytes into CRI log lines, keeping an unterminated tail until its
/// newline arrives, the tail exceeds `max_line`, or the stream ends.
#[derive(Debug)]
pub struct LineFramer {
    stream: Stream,
    max_line: usize,
    pending: Vec<u8>,
    /// Timestamp of the first byte of `pending` (a line is stamped when it began).
    pending_ts: i64,
}

impl LineFramer {
    pub fn new(stream: Stream, max_line: usize) -> Self {
        Self {
            stream,
            max_line: max_line.max(1),
            pending: Vec::new(),
            pending_ts: 0,
        }
    }

    /// Feeds `data` received at `ts` (Unix nanos), appending finished lines to `out`.
    pub fn feed(&mut self, ts: i64, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            if self.pending.is_empty() {
                self.pending_ts = ts;
            }
            let room = self.max_line - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|b| *b == b'\n') {
                self.pending.extend_from_slice(&window[..nl]);
                self.emit(true, out);
                data = &data[nl + 1..];
            } else {
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
                if self.pending.len() >= self.max_line {
                    self.emit(false, out);
                }
            }
        }
    }

    /// Bytes held back as an unterminated tail.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The stream ended: an unterminated tail becomes a `P` line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit(false, out);
        }
    }

    fn emit(&mut self, full: bool, out: &mut Vec<u8>) {
        let ts = rfc3339_nano(self.pending_ts);
        push_line(out, &ts, self.stream, full, &self.pending);
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_700_000_000_123_456_789;

    #[test]
    fn timestamps_match_go_rfc3339nano() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(TS), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(
            rfc3339_nano(1_700_000_000_120_000_000),
            "2023-11-14T22:13:20.12Z"
        );
        // 2024-02-29 (leap day) 12:00:00
        assert_eq!(
            rfc3339_nano(1_709_208_000 * 1_000_000_000),
            "2024-02-29T12:00:00Z"
        );
        assert_eq!(rfc3339_nano(-1), "1969-12-31T23:59:59.999999999Z");
    }

    fn frame(chunks: &[&[u8]], max: usize) -> String {
        let mut f = LineFramer::new(Stream::Stdout, max);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(TS, c, &mut out);
        }
        f.finish(&mut out);
        String::from_utf8_lossy(&out).replace("2023-11-14T22:13:20.123456789Z ", "")
    }

    #[test]
    fn full_partial_and_split_lines() {
        assert_eq!(frame(&[b"a\nb\n"], 16), "stdout F a\nstdout F b\n");
        // A line arriving in pieces is one line.
        assert_eq!(frame(&[b"hel", b"lo\n"], 16), "stdout F hello\n");
        // Unterminated at EOF: partial.
        assert_eq!(frame(&[b"x\ntail"], 16), "stdout F x\nstdout P tail\n");
        // Long line: split at the bound, the rest full.
        assert_eq!(
            frame(&[b"abcdefghij\n"], 4),
            "stdout P abcd\nstdout P efgh\nstdout F ij\n"
        );
        // Exactly the bound then newline: one P of 4 then an empty F.
        assert_eq!(frame(&[b"abcd\n"], 4), "stdout P abcd\nstdout F \n");
        assert_eq!(frame(&[b"\n"], 4), "stdout F \n");
        assert_eq!(frame(&[], 4), "");
    }

    #[test]
    fn binary_passes_through() {
        let mut f = LineFramer::new(Stream::Stderr, 64);
        let mut out = Vec::new();
        f.feed(TS, &[0, 255, 13, 10], &mut out);
        let mut want = b"2023-11-14T22:13:20.123456789Z stderr F ".to_vec();
        want.extend_from_slice(&[0, 255, 13, 10]);
        assert_eq!(out, want);
    }
}
