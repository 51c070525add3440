//! Single-use tokens for streaming URLs: the CRI call stores what to run under a random
//! token and returns its URL; the first request for the URL takes the entry out. Entries
//! expire after a minute (containerd's and kubelet's cache time), and the cache is bounded
//! so a client that asks for URLs and never uses them cannot grow it without limit.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most pending entries.
pub const MAX_TOKENS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Too many pending streaming requests ({0}); try again later")]
    Full(usize),
    #[error("Cannot read random bytes for a streaming token")]
    Random(#[source] std::io::Error),
}

pub struct TokenCache<T> {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `value` under a new random token and returns the token.
    pub fn insert(&self, value: T) -> Result<String, TokenError> {
        let token = random_token()?;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if entries.len() >= self.max {
            return Err(TokenError::Full(self.max));
        }
        entries.insert(token.clone(), (now, value));
        Ok(token)
    }

    /// Takes the entry of `token` out; `None` if unknown, already used or expired.
    pub fn consume(&self, token: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, value) = entries.remove(token)?;
        (at.elapsed() < self.ttl).then_some(value)
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 16 random bytes from the kernel, as 32 lower-case hex digits (URL-safe).
fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(TokenError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_once() {
        let c = TokenCache::new(TOKEN_TTL, 10);
        let t = c.insert(7).unwrap();
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(c.consume(&t), Some(7));
        assert_eq!(c.consume(&t), None);
        assert_eq!(c.consume("nope"), None);
    }

    #[test]
    fn tokens_expire() {
        let c = TokenCache::new(Duration::from_millis(50), 10);
        let t = c.insert("x").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.consume(&t), None);
        // Expired entries are purged on the next insert.
        let _ = c.insert("y").unwrap();
        let _ = c.insert("z").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        let _ = c.insert("w").unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = TokenCache::new(TOKEN_TTL, 2);
        let a = c.insert(1).unwrap();
        let _ = c.insert(2).unwrap();
        assert!(matches!(c.insert(3), Err(TokenError::Full(2))));
        assert_ne!(a, c.insert_after_consume(&a));
    }

    impl<T: Default> TokenCache<T> {
        fn insert_after_consume(&self, t: &str) -> String {
            self.consume(t);
            self.insert(T::default()).unwrap()
        }
    }
}
