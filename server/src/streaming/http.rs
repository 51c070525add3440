//! The HTTP/1.1 side of the streaming server: reading a request head, plain error
//! responses, and the 101 upgrade answers. Only what an upgrade needs: no bodies, no
//! keep-alive (every connection carries one request).

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before a complete request")]
    Eof,
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// All values of a header, comma-separated lists split, in order.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Whether `Connection` lists `upgrade` and `Upgrade` lists `proto`.
    pub fn upgrades_to(&self, proto: &str) -> bool {
        self.values("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("upgrade"))
            && self
                .values("upgrade")
                .iter()
                .any(|v| v.eq_ignore_ascii_case(proto))
    }
}

/// Reads the request line and headers (up to the empty line).
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Head, HeadError> {
    let mut buf = Vec::new();
    loop {
        let before = buf.len();
        let n = r.read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let line = &buf[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    parse_head(&buf)
}

pub fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete".into())),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    Ok(Head {
        method: req.method.unwrap_or("").to_owned(),
        path,
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

/// Writes a complete plain-text response and ends it.
pub async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    extra: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut s = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(code),
        body.len() + 1
    );
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.push('\n');
    w.write_all(s.as_bytes()).await?;
    w.flush().await?;
    w.shutdown().await
}

/// Writes a `101 Switching Protocols` head.
pub async fn switch<W: AsyncWrite + Unpin>(
    w: &mut W,
    upgrade: &str,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n"
    );
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    w.write_all(s.as_bytes()).await?;
    w.flush().await
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}
