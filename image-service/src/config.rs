//! Registry configuration, in the spirit of containerd's `hosts.toml` (see [`RegistryConfig`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

/// Registry configuration, in the spirit of containerd's `hosts.toml`.
///
/// hulld embeds [`RegistryConfig`] in its TOML config as `[registry]`. The default has no
/// host sections: every registry is reached directly, over https, except registries on
/// the loopback (`localhost`, `127.0.0.0/8`, `[::1]`, any port), which get plain http as
/// with containerd and Docker. Each `[registry.hosts."x"]` section only changes host `x`;
/// the others keep these defaults.
///
/// ```toml
/// [registry.hosts."registry.k8s.io"]
/// mirrors = [{ endpoint = "http://127.0.0.1:5000" }]
/// upstream = false          # never fall back to https://registry.k8s.io
///
/// [registry.hosts."myregistry.example:5443"]
/// mirrors = [{ endpoint = "https://mirror.example", ca_file = "/etc/hull/mirror-ca.pem" }]
/// auth = { username = "me", password = "secret" }
///
/// [registry.hosts."10.0.0.5:5000"]
/// plain_http = true         # the upstream itself speaks http
///
/// [registry.hosts."localhost:5443"]
/// plain_http = false        # a loopback registry with TLS
/// ```
///
/// A mirror endpoint is `scheme://host[:port]`; the repository path is kept
/// (`registry.k8s.io/pause:3.10` is fetched as `127.0.0.1:5000/pause:3.10`) and the image
/// keeps its original name in `RepoTags`.
///
/// A mirror may also carry the registry API path with a prefix, as containerd's
/// `hosts.toml` `server = "http://127.0.0.1:5000/v2/prefix"` (a pull-through cache that
/// serves each upstream under its own project): `registry.k8s.io/pause:3.10` is then
/// fetched from `http://127.0.0.1:5000/v2/prefix/pause/manifests/3.10`. The path must
/// start with `/v2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Per registry host (`registry.k8s.io`, `docker.io`, `host:port`).
    pub hosts: BTreeMap<String, HostConfig>,
    /// The platform picked from multi-platform indexes.
    pub platform: PlatformConfig,
    /// Layers fetched and unpacked at once per pull.
    pub max_concurrent_layers: usize,
    /// Upper bound of the uncompressed size of one layer, in bytes.
    pub max_layer_bytes: u64,
    /// Upper bound of the number of entries in one layer.
    pub max_layer_entries: u64,
    /// Upper bound of a manifest, index or config document, in bytes.
    pub max_manifest_bytes: u64,
}

/// Settings of one registry host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Mirrors tried in order before the upstream.
    pub mirrors: Vec<MirrorConfig>,
    /// Whether the upstream host itself is tried after the mirrors (default true).
    pub upstream: Option<bool>,
    /// Speak plain http to the upstream host. Unset: only for loopback hosts
    /// (`localhost`, `127.0.0.0/8`, `[::1]`), as containerd and Docker do.
    pub plain_http: Option<bool>,
    /// Skip TLS verification of the upstream host.
    pub skip_verify: bool,
    /// Extra CA (PEM) for the upstream host.
    pub ca_file: Option<PathBuf>,
    /// Credentials for this host, used when the CRI request carries none.
    pub auth: Option<AuthConfig>,
}

/// One mirror endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// `http://host:port` or `https://host[:port]`, optionally with an API path
    /// `/v2/<prefix>` (`http://127.0.0.1:5000/v2/mirrors/k8s`).
    pub endpoint: String,
    /// Skip TLS verification (https only).
    pub skip_verify: bool,
    /// Extra CA (PEM) trusted for this mirror.
    pub ca_file: Option<PathBuf>,
    /// Credentials for the mirror; otherwise the request's credentials are used.
    pub auth: Option<AuthConfig>,
}

/// Registry credentials, the same fields as the CRI `AuthConfig`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// User name for basic auth (or the token exchange).
    pub username: String,
    /// Password for basic auth.
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// An OAuth2 refresh token, exchanged at the registry's token endpoint.
    pub identity_token: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The platform to select from an image index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// GOOS-style OS, `linux`.
    pub os: String,
    /// GOARCH-style architecture, `amd64`.
    pub architecture: String,
    /// Optional variant (`v8`); empty matches any.
    pub variant: String,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }
    }
}

impl Default for RegistryConfig {
    /// No mirrors, no per-host settings: a real node pulls from the registries themselves.
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            platform: PlatformConfig::default(),
            max_concurrent_layers: 3,
            max_layer_bytes: 32 << 30,
            max_layer_entries: 2_000_000,
            max_manifest_bytes: 4 << 20,
        }
    }
}

/// Whether a registry host (`name[:port]`, `[v6]:port`) is on the loopback: `localhost`,
/// `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(addr, _)| addr)
    } else if host.matches(':').count() == 1 {
        host.split_once(':').map_or(host, |(name, _)| name)
    } else {
        host
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where one pull attempt goes: scheme, host and TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    /// `host[:port]`, as used in the rewritten reference.
    pub host: String,
    /// Repository prefix from the mirror's `/v2/<prefix>` path (empty: none).
    pub repo_prefix: String,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub ca_file: Option<PathBuf>,
    /// Credentials configured for this endpoint (mirror or host).
    pub auth: Option<AuthConfig>,
    pub is_mirror: bool,
}

impl Endpoint {
    /// The repository as named at this endpoint (behind its prefix, if any).
    pub(crate) fn repository(&self, repo: &str) -> String {
        if self.repo_prefix.is_empty() {
            repo.to_string()
        } else {
            format!("{}/{repo}", self.repo_prefix)
        }
    }

    /// `host[:port][/v2/<prefix>]`, for messages.
    pub(crate) fn display(&self) -> String {
        if self.repo_prefix.is_empty() {
            self.host.clone()
        } else {
            format!("{}/v2/{}", self.host, self.repo_prefix)
        }
    }
}

impl std::hash::Hash for AuthConfig {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.username.hash(state);
        self.password.hash(state);
        self.auth.hash(state);
        self.identity_token.hash(state);
        self.registry_token.hash(state);
    }
}
impl Eq for AuthConfig {}

impl RegistryConfig {
    /// Checks endpoints and limits; call it when loading the config.
    pub fn validate(&self) -> Result<()> {
        for (host, cfg) in &self.hosts {
            for m in &cfg.mirrors {
                parse_endpoint(&m.endpoint).map_err(|e| {
                    ImageError::Config(format!("host {host}: mirror {:?}: {e}", m.endpoint))
                })?;
            }
        }
        if self.max_concurrent_layers == 0 {
            return Err(ImageError::Config(
                "max_concurrent_layers must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// The endpoints to try for `registry`, in order.
    pub(crate) fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>> {
        let Some(cfg) = self.hosts.get(registry) else {
            return Ok(vec![upstream(registry, &HostConfig::default())]);
        };
        let mut out = Vec::with_capacity(cfg.mirrors.len() + 1);
        for m in &cfg.mirrors {
            let (plain_http, host, repo_prefix) = parse_endpoint(&m.endpoint)
                .map_err(|e| ImageError::Config(format!("mirror {:?}: {e}", m.endpoint)))?;
            out.push(Endpoint {
                host,
                repo_prefix,
                plain_http,
                skip_verify: m.skip_verify,
                ca_file: m.ca_file.clone(),
                auth: m.auth.clone(),
                is_mirror: true,
            });
        }
        if cfg.upstream.unwrap_or(true) || out.is_empty() {
            out.push(upstream(registry, cfg));
        }
        Ok(out)
    }
}

fn upstream(registry: &str, cfg: &HostConfig) -> Endpoint {
    // Docker Hub's API lives on index.docker.io.
    let host = if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    };
    Endpoint {
        host: host.to_string(),
        repo_prefix: String::new(),
        plain_http: cfg.plain_http.unwrap_or_else(|| is_loopback_host(registry)),
        skip_verify: cfg.skip_verify,
        ca_file: cfg.ca_file.clone(),
        auth: cfg.auth.clone(),
        is_mirror: false,
    }
}

/// `http://h:p` → (true, "h:p", ""); `https://h/v2/a/b` → (false, "h", "a/b").
fn parse_endpoint(endpoint: &str) -> std::result::Result<(bool, String, String), String> {
    let (plain, rest) = if let Some(r) = endpoint.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = endpoint.strip_prefix("https://") {
        (false, r)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains('@') || host.contains(['?', '#']) {
        return Err("must be scheme://host[:port][/v2/<prefix>]".into());
    }
    let path = path.trim_matches('/');
    let prefix = match path.strip_prefix("v2") {
        _ if path.is_empty() => "",
        Some("") => "",
        Some(p) if p.starts_with('/') => p.trim_start_matches('/'),
        _ => return Err("a path must be the registry API root, /v2[/<prefix>]".into()),
    };
    let valid = |c: &str| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if !prefix.is_empty() && !prefix.split('/').all(valid) {
        return Err(format!("bad repository prefix {prefix:?}"));
    }
    Ok((plain, host.to_string(), prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_has_no_mirrors_and_loopback_speaks_http() {
        let cfg = RegistryConfig::default();
        cfg.validate().unwrap();
        assert!(cfg.hosts.is_empty(), "{:?}", cfg.hosts);
        for h in ["registry.k8s.io", "k8s.gcr.io", "gcr.io", "quay.io"] {
            let eps = cfg.endpoints(h).unwrap();
            assert_eq!(eps.len(), 1, "{h}");
            assert_eq!((eps[0].host.as_str(), eps[0].plain_http), (h, false));
        }
        let eps = cfg.endpoints("docker.io").unwrap();
        assert_eq!(eps[0].host, "index.docker.io");
        assert!(!eps[0].plain_http);
        for h in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:1",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            let eps = cfg.endpoints(h).unwrap();
            assert!(eps[0].plain_http, "{h} gets plain http");
        }
        for h in [
            "localhost.example:5000",
            "10.0.0.1:5000",
            "128.0.0.1",
            "[::2]:5000",
        ] {
            assert!(!cfg.endpoints(h).unwrap()[0].plain_http, "{h} gets https");
        }
    }

    #[test]
    fn one_host_section_leaves_the_other_hosts_alone() {
        let text = r#"
            [hosts."registry.k8s.io"]
            mirrors = [{ endpoint = "http://127.0.0.1:5000" }]
            upstream = false
            [hosts."127.0.0.1:5001"]
            auth = { username = "u", password = "p" }
            [hosts."localhost:5443"]
            plain_http = false
            [hosts."10.0.0.1:5000"]
            plain_http = true
        "#;
        let cfg: RegistryConfig = toml::from_str(text).unwrap();
        let eps = cfg.endpoints("registry.k8s.io").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(
            (eps[0].host.as_str(), eps[0].plain_http),
            ("127.0.0.1:5000", true)
        );
        // A section for a loopback host that does not say plain_http keeps http.
        let eps = cfg.endpoints("127.0.0.1:5001").unwrap();
        assert!(eps[0].plain_http);
        assert_eq!(eps[0].auth.as_ref().map(|a| a.username.as_str()), Some("u"));
        assert!(!cfg.endpoints("localhost:5443").unwrap()[0].plain_http);
        assert!(cfg.endpoints("10.0.0.1:5000").unwrap()[0].plain_http);
        // Hosts without a section keep the defaults.
        assert!(cfg.endpoints("localhost:5000").unwrap()[0].plain_http);
        assert!(!cfg.endpoints("gcr.io").unwrap()[0].plain_http);
        assert_eq!(
            cfg.max_concurrent_layers,
            RegistryConfig::default().max_concurrent_layers
        );
    }

    #[test]
    fn toml_round_trip_and_bad_endpoint() {
        let text = r#"
            [hosts."example.com"]
            mirrors = [{ endpoint = "https://m1.example", skip_verify = true }, { endpoint = "http://10.0.0.1:5000" }]
            auth = { username = "u", password = "p" }
        "#;
        let cfg: RegistryConfig = toml::from_str(text).unwrap();
        let eps = cfg.endpoints("example.com").unwrap();
        let hosts: Vec<_> = eps
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http))
            .collect();
        assert_eq!(
            hosts,
            [
                ("m1.example", false),
                ("10.0.0.1:5000", true),
                ("example.com", false)
            ]
        );
        assert_eq!(eps[2].auth.as_ref().unwrap().username, "u");
        assert!(format!("{:?}", eps[2].auth).find("p\"").is_none());
        let bad: RegistryConfig =
            toml::from_str("[hosts.x]\nmirrors = [{ endpoint = \"ftp://x\" }]").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn mirror_api_path_gives_a_repository_prefix() {
        let ok = [
            ("http://127.0.0.1:5000", "127.0.0.1:5000", ""),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000", ""),
            ("http://127.0.0.1:5000/v2", "127.0.0.1:5000", ""),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000", ""),
            (
                "http://127.0.0.1:5000/v2/prefix",
                "127.0.0.1:5000",
                "prefix",
            ),
            (
                "https://m.example/v2/cache/k8s.io/",
                "m.example",
                "cache/k8s.io",
            ),
        ];
        for (endpoint, host, prefix) in ok {
            let (_, h, p) = parse_endpoint(endpoint).unwrap();
            assert_eq!((h.as_str(), p.as_str()), (host, prefix), "{endpoint}");
        }
        for bad in [
            "http://h/prefix",
            "http://h/v2x",
            "http://h/v2/../x",
            "http://h/v2/UPPER",
            "http://h/v2/a//b",
            "http://u@h/v2",
            "http:///v2",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        let mut cfg = RegistryConfig::default();
        let mirror = |endpoint: &str| HostConfig {
            mirrors: vec![MirrorConfig {
                endpoint: endpoint.into(),
                ..MirrorConfig::default()
            }],
            upstream: Some(false),
            ..HostConfig::default()
        };
        cfg.hosts.insert(
            "registry.k8s.io".into(),
            mirror("http://127.0.0.1:5000/v2/mirrors/k8s"),
        );
        cfg.hosts
            .insert("gcr.io".into(), mirror("http://127.0.0.1:5000"));
        cfg.validate().unwrap();
        let eps = cfg.endpoints("registry.k8s.io").unwrap();
        assert_eq!(eps[0].host, "127.0.0.1:5000");
        assert_eq!(eps[0].repo_prefix, "mirrors/k8s");
        assert_eq!(cfg.endpoints("gcr.io").unwrap()[0].repo_prefix, "");
    }
}
