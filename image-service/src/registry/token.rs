//! Exchanging an identity token (an OAuth2 refresh token, docker's `identitytoken`) for
//! a registry access token at the token endpoint the registry names in its challenge.

use crate::error::{ImageError, Result};

/// Longest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// `key="value"` pairs of a `WWW-Authenticate: Bearer ...` header.
fn bearer_params(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut out = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        out.push((
            k.trim().to_ascii_lowercase(),
            v.trim().trim_matches('"').to_string(),
        ));
    }
    Some(out)
}

/// Gets an access token for pulling `repo` from `base` (`http[s]://host`).
pub(crate) async fn exchange(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    username: &str,
    refresh_token: &str,
) -> Result<String> {
    let refused = |message: String| ImageError::Unauthenticated {
        reference: repo.to_string(),
        registry: base.to_string(),
        message,
    };
    let other =
        |e: reqwest::Error| ImageError::InvalidArgument(format!("token exchange with {base}: {e}"));
    let res = http
        .get(format!("{base}/v2/"))
        .send()
        .await
        .map_err(other)?;
    let challenge = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_params)
        .ok_or_else(|| {
            refused("registry offers no bearer token endpoint for the identity token".into())
        })?;
    let get = |k: &str| {
        challenge
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm").ok_or_else(|| refused("bearer challenge without realm".into()))?;
    let scope = format!("repository:{repo}:pull");
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh_token.to_string()),
        ("client_id", "hull".to_string()),
        ("scope", scope),
    ];
    if let Some(service) = get("service") {
        form.push(("service", service));
    }
    if !username.is_empty() {
        form.push(("username", username.to_string()));
    }
    let res = http.post(&realm).form(&form).send().await.map_err(other)?;
    let status = res.status();
    // Read with a cap as it streams in: an endless answer is cut, not buffered whole.
    let body = super::fetch::read_prefix(res, MAX_TOKEN_RESPONSE).await;
    let body = body.as_slice();
    if !status.is_success() {
        return Err(refused(format!(
            "token endpoint answered {status}: {}",
            String::from_utf8_lossy(body)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| refused(format!("bad token endpoint answer: {e}")))?;
    v.get("access_token")
        .or_else(|| v.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| refused("token endpoint answer has no token".into()))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A fake registry + token endpoint on loopback (unit test only): answers the /v2/
    /// challenge, then the POST with a token if the refresh token is right.
    async fn fake(listener: tokio::net::TcpListener) {
        let port = listener.local_addr().unwrap().port();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let resp = if req.starts_with("GET /v2/") {
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            } else if req.contains("refresh_token=good")
                && req.contains("grant_type=refresh_token")
                && req.contains("service=fake")
            {
                let body = r#"{"access_token":"access-123"}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"
                    .to_string()
            };
            s.write_all(resp.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn exchanges_refresh_token() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        for (token, ok) in [("good", true), ("wrong", false)] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let server = tokio::spawn(fake(l));
            let res = exchange(&http, &base, "lib/app", "me", token).await;
            server.await.unwrap();
            match (res, ok) {
                (Ok(t), true) => assert_eq!(t, "access-123"),
                (Err(e), false) => assert_eq!(e.code(), crate::ErrorKind::Unauthenticated, "{e}"),
                (r, _) => panic!("unexpected {r:?}"),
            }
        }
    }

    #[test]
    fn parses_challenge() {
        let p = bearer_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example""#,
        )
        .unwrap();
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert!(bearer_params("Basic realm=\"x\"").is_none());
    }
}
