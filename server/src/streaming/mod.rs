//! The streaming server behind CRI `Exec`, `Attach` and `PortForward` (kubelet's
//! `k8s.io/kubelet/pkg/cri/streaming` model): the CRI call resolves its target (the
//! container and the pod's agent client), stores it under a single-use token and answers
//! with `http://<streaming.address>/<exec|attach|portforward>/<token>`. The client then
//! upgrades that HTTP request to SPDY/3.1 (`v5`/`v4`/`v3`/`v2.channel.k8s.io`,
//! `channel.k8s.io`; `portforward.k8s.io`) or to a WebSocket (`v5`…`channel.k8s.io`,
//! `base64.channel.k8s.io`; `SPDY/3.1+portforward.k8s.io` tunnels SPDY port-forward in
//! WebSocket messages), and the session runs against the agent in the pod's VM.
//!
//! Layout: `server.rs` (accept, route, handshakes), `http.rs` (request heads, responses),
//! `tokens.rs` (single-use token cache), `spdy/` (frame codec, connection),
//! `ws.rs` (WebSocket codec and channels), `remotecommand.rs` (exec/attach protocol),
//! `exec.rs` (exec/attach against the agent), `portforward.rs`.

pub mod exec;
pub mod http;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod tokens;
#[cfg(test)]
mod unit_tests;
pub mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

pub use exec::{AttachTarget, ExecTarget};
pub use portforward::PortForwardTarget;
pub use remotecommand::Wanted;

use tokens::{MAX_TOKENS, TOKEN_TTL, TokenCache, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("streaming.address {0:?} is not an ip:port address")]
    Address(String),
    #[error("Cannot listen on {addr} for the streaming server")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("The streaming server is already serving")]
    AlreadyServing,
    #[error("Cannot serve the streaming listener")]
    Listener(#[source] std::io::Error),
}

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Target {
    Exec(ExecTarget),
    Attach(AttachTarget),
    PortForward(PortForwardTarget),
}

impl Target {
    /// The URL path segment of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Attach(_) => "attach",
            Self::PortForward(_) => "portforward",
        }
    }
}

/// The streaming server: a bound listener, its URL base and the pending tokens.
pub struct StreamingServer {
    addr: SocketAddr,
    listener: Mutex<Option<std::net::TcpListener>>,
    tokens: TokenCache<Target>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StreamingServer {
    /// Binds `address` (`ip:port`; port 0 picks a free port) now, so the URLs are known
    /// before [`serve`](Self::serve) runs.
    pub fn bind(address: &str) -> Result<Self, StreamingError> {
        let addr: SocketAddr = address
            .parse()
            .map_err(|_| StreamingError::Address(address.to_owned()))?;
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| StreamingError::Bind { addr, source })?;
        let mut addr = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind { addr, source })?;
        // URLs need an address a client can dial.
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        tracing::info!(%addr, "streaming server bound");
        Ok(Self {
            addr,
            listener: Mutex::new(Some(listener)),
            tokens: TokenCache::new(TOKEN_TTL, MAX_TOKENS),
        })
    }

    /// The address the URLs point at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores `target` under a new token and returns its URL.
    pub fn url_for(&self, target: Target) -> Result<String, StreamingError> {
        let kind = target.kind();
        let token = self.tokens.insert(target)?;
        Ok(format!("http://{}/{kind}/{token}", self.addr))
    }

    /// Takes the target of a token (single use).
    pub fn consume(&self, token: &str) -> Option<Target> {
        self.tokens.consume(token)
    }

    /// Serves connections until the task is dropped or aborted.
    pub async fn serve(self: Arc<Self>) -> Result<(), StreamingError> {
        let std = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(StreamingError::AlreadyServing)?;
        let listener = tokio::net::TcpListener::from_std(std).map_err(StreamingError::Listener)?;
        tracing::info!(addr = %self.addr, "serving exec/attach/port-forward");
        server::accept_loop(self, listener).await;
        Ok(())
    }
}
