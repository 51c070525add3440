//! Small registry documents (manifests, indexes, error bodies, token answers) read with a
//! size cap *while* streaming: a hostile or broken registry can send an endless body, and
//! `oci_client::Client::pull_manifest_raw` (like `reqwest::Response::bytes`) buffers the
//! whole of it before anything can check its size. A `Content-Length` over the cap is
//! refused before the first byte; a body without one is cut off at the cap.

use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;

/// The longest error body read from a registry (for its message).
pub(crate) const MAX_ERROR_BODY: u64 = 64 << 10;

/// How long fetching one manifest may take in all (a body trickling in byte by byte
/// within the read timeout would otherwise hold a pull for hours).
pub(crate) const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a capped read failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CappedError {
    #[error("The body is over {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("Reading the body failed")]
    Read(#[source] reqwest::Error),
}

/// Reads `resp`'s body, refusing one over `max` bytes (by its `Content-Length` at once,
/// else as soon as the bytes read pass `max`).
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: u64,
) -> Result<bytes::Bytes, CappedError> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(CappedError::TooLarge { limit: max });
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(CappedError::Read)? {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(CappedError::TooLarge { limit: max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Like [`read_capped`], but an over-long body is cut at `max` rather than refused (for
/// error messages).
pub(crate) async fn read_prefix(mut resp: reqwest::Response, max: u64) -> Vec<u8> {
    let mut body = Vec::new();
    while (body.len() as u64) < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    body
}

/// Why a manifest fetch failed: the registry's answer or transport (as the OCI client
/// reports them, so that one mapping classifies both), or a body over the cap.
#[derive(Debug)]
pub(crate) enum ManifestFetchError {
    Registry(OciDistributionError),
    TooLarge { limit: u64 },
}

impl From<CappedError> for ManifestFetchError {
    fn from(e: CappedError) -> Self {
        match e {
            CappedError::TooLarge { limit } => Self::TooLarge { limit },
            CappedError::Read(e) => Self::Registry(e.into()),
        }
    }
}

/// One manifest request: where, accepting what, with which credentials.
pub(crate) struct ManifestRequest<'a> {
    pub url: String,
    pub accept: &'a [&'a str],
    /// The bearer token the OCI client got for this repository, if any.
    pub token: Option<&'a str>,
    pub auth: &'a RegistryAuth,
    pub max: u64,
}

/// `GET` a manifest or index, its body capped at `req.max` bytes.
pub(crate) async fn manifest(
    http: &reqwest::Client,
    req: ManifestRequest<'_>,
) -> Result<bytes::Bytes, ManifestFetchError> {
    let mut get = http
        .get(&req.url)
        .timeout(MANIFEST_TIMEOUT)
        .header(reqwest::header::ACCEPT, req.accept.join(", "));
    get = match (req.token, req.auth) {
        (Some(token), _) => get.bearer_auth(token),
        (None, RegistryAuth::Basic(user, password)) => get.basic_auth(user, Some(password)),
        (None, _) => get,
    };
    let resp = get
        .send()
        .await
        .map_err(|e| ManifestFetchError::Registry(e.into()))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        let body = read_prefix(resp, MAX_ERROR_BODY).await;
        return Err(ManifestFetchError::Registry(status_error(
            status, &body, &req.url,
        )));
    }
    Ok(read_capped(resp, req.max).await?)
}

/// A non-200 answer as the OCI client reports it (its `validate_registry_response`).
fn status_error(status: reqwest::StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let url = url.to_owned();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError { url };
    }
    if status.is_client_error()
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body)
    {
        return OciDistributionError::RegistryError { envelope, url };
    }
    if status.is_success() {
        return OciDistributionError::SpecViolationError(format!(
            "expected HTTP status 200, got {status}"
        ));
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url,
        message: String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A hostile HTTP server on loopback (unit test only): answers one request with
    /// `head`, then with endless 64 KiB chunks until the client goes away. Returns its URL
    /// and a handle giving the bytes it sent.
    fn endless(head: &'static str) -> (String, std::thread::JoinHandle<u64>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/v2/x/manifests/latest",
            listener.local_addr().expect("addr")
        );
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let mut sent = 0u64;
            if s.write_all(head.as_bytes()).is_err() {
                return sent;
            }
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            while s.write_all(chunk.as_bytes()).is_ok() {
                sent += 0x10000;
                if sent > 1 << 30 {
                    break; // The test's bound, should the client never stop.
                }
            }
            sent
        });
        (url, server)
    }

    /// The server's byte count, once the client side closed (joined off the runtime,
    /// which must go on running the connection to close it).
    async fn sent(server: std::thread::JoinHandle<u64>) -> u64 {
        tokio::task::spawn_blocking(move || server.join().expect("server"))
            .await
            .expect("join")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_body_is_refused_at_the_cap() {
        let (url, server) = endless("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let resp = reqwest::get(&url).await.expect("get");
        let err = read_capped(resp, 1 << 20).await.expect_err("endless body");
        assert!(
            matches!(err, CappedError::TooLarge { limit } if limit == 1 << 20),
            "{err:?}"
        );
        let sent = sent(server).await;
        assert!(
            sent < 64 << 20,
            "the client stopped reading early: {sent} bytes sent"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_content_length_is_refused_before_the_body() {
        let (url, server) = endless("HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n");
        let resp = reqwest::get(&url).await.expect("get");
        let err = read_capped(resp, 4 << 20).await.expect_err("10 GiB");
        assert!(matches!(err, CappedError::TooLarge { .. }), "{err:?}");
        drop(server);
        let (url, server) = endless("HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n");
        let resp = reqwest::get(&url).await.expect("get");
        assert_eq!(
            read_prefix(resp, 1000).await.len(),
            1000,
            "an error body is cut"
        );
        sent(server).await;
    }

    #[test]
    fn status_errors_read_like_the_oci_clients() {
        let not_found = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such"}]}"#;
        let e = status_error(reqwest::StatusCode::NOT_FOUND, not_found, "u");
        assert!(
            matches!(e, OciDistributionError::RegistryError { .. }),
            "{e:?}"
        );
        let e = status_error(reqwest::StatusCode::NOT_FOUND, b"plain", "u");
        assert!(
            matches!(e, OciDistributionError::ServerError { code: 404, .. }),
            "{e:?}"
        );
        let e = status_error(reqwest::StatusCode::UNAUTHORIZED, b"", "u");
        assert!(matches!(e, OciDistributionError::UnauthorizedError { .. }));
        let e = status_error(reqwest::StatusCode::BAD_GATEWAY, b"down", "u");
        assert!(matches!(
            e,
            OciDistributionError::ServerError { code: 502, .. }
        ));
    }
}
