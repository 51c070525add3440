//! One `oci_client::Client` per (endpoint, credentials), and the resolution of a reference
//! to a single-platform manifest, trying mirrors in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::auth::registry_auth;
use super::fetch;
use super::manifest::{self, ImageManifest, Parsed};
use crate::config::{AuthConfig, Endpoint, RegistryConfig};
use crate::content::{BlobStream, Digest};
use crate::error::{ImageError, Result};

/// Cached clients at most; the cache is dropped whole when full.
const MAX_CLIENTS: usize = 64;

type ClientKey = (Endpoint, Option<AuthConfig>);

/// The clients of one endpoint: the OCI client (auth, blobs), and a plain HTTP client
/// with the same TLS settings for manifests, read with a size cap (see [`fetch`]).
#[derive(Clone)]
struct Clients {
    oci: Arc<Client>,
    http: reqwest::Client,
}

/// The registry side of the image service.
pub(crate) struct Registry {
    cfg: RegistryConfig,
    clients: Mutex<HashMap<ClientKey, Clients>>,
}

/// A client bound to one endpoint, reference and credentials, for fetching blobs.
pub(crate) struct Session {
    client: Arc<Client>,
    http: reqwest::Client,
    /// The credentials for this endpoint, and the bearer token the OCI client got with
    /// them (none: anonymous or HTTP basic).
    auth: RegistryAuth,
    token: Option<String>,
    /// `http` or `https`.
    scheme: &'static str,
    /// The reference rewritten to the endpoint's host.
    at: Reference,
    /// The endpoint's host, for messages.
    pub host: String,
    original: String,
}

/// A reference resolved to one platform's manifest.
pub(crate) struct Resolved {
    pub session: Session,
    /// What the reference pointed to (index or manifest), for RepoDigests.
    pub top_digest: Digest,
    /// Documents fetched on the way (index and manifest), to keep in the content store.
    pub documents: Vec<(Digest, bytes::Bytes)>,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
}

impl Registry {
    pub(crate) fn new(cfg: RegistryConfig) -> Result<Self> {
        cfg.validate()?;
        // reqwest is built without a default rustls provider; use ring (idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            cfg,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    fn client(&self, ep: &Endpoint, auth: &Option<AuthConfig>, cache: bool) -> Result<Clients> {
        let key = (ep.clone(), auth.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut extra = Vec::new();
        if let Some(ca) = &ep.ca_file {
            let data = std::fs::read(ca).map_err(ImageError::fs("Read CA file", ca))?;
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if ep.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.skip_verify,
            extra_root_certificates: extra,
            max_concurrent_download: self.cfg.max_concurrent_layers,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let client = Clients {
            oci: Arc::new(Client::new(config)),
            http: http_client(ep)?,
        };
        if !cache {
            return Ok(client);
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Resolves `reference` to a single-platform manifest, trying each endpoint in order.
    /// Errors from endpoints that answered (not found, refused) win over connection errors.
    pub(crate) async fn resolve(
        &self,
        reference: &Reference,
        auth: Option<&AuthConfig>,
    ) -> Result<Resolved> {
        let endpoints = self.cfg.endpoints(reference.registry())?;
        let mut answered: Option<ImageError> = None;
        let mut last: Option<ImageError> = None;
        for ep in &endpoints {
            match self.resolve_at(ep, reference, auth).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::warn!(endpoint = %ep.display(), error = %e, "endpoint failed");
                    if matches!(
                        e.code(),
                        crate::ErrorKind::NotFound | crate::ErrorKind::Unauthenticated
                    ) {
                        answered = Some(e);
                    } else {
                        last = Some(e);
                    }
                }
            }
        }
        Err(answered.or(last).unwrap_or_else(|| {
            ImageError::Config(format!("no endpoint for {}", reference.registry()))
        }))
    }

    async fn resolve_at(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        auth: Option<&AuthConfig>,
    ) -> Result<Resolved> {
        // CRI credentials go to the upstream; a mirror uses its own when configured.
        let creds = if ep.is_mirror {
            ep.auth.as_ref().or(auth)
        } else {
            auth.or(ep.auth.as_ref())
        }
        .cloned();
        let reg_auth = match &creds {
            Some(c) => match registry_auth(c)? {
                Some(a) => a,
                None => RegistryAuth::Bearer(
                    identity_token_exchange(ep, &ep.repository(reference.repository()), c).await?,
                ),
            },
            None => RegistryAuth::Anonymous,
        };
        // An exchanged access token expires: such clients are not cached.
        let cache = creds.as_ref().is_none_or(|c| c.identity_token.is_empty());
        let clients = self.client(ep, &creds, cache)?;
        let repo = ep.repository(reference.repository());
        let at = match (reference.tag(), reference.digest()) {
            (_, Some(d)) => Reference::with_digest(ep.host.clone(), repo.clone(), d.into()),
            (Some(t), None) => Reference::with_tag(ep.host.clone(), repo.clone(), t.into()),
            (None, None) => Reference::with_tag(ep.host.clone(), repo.clone(), "latest".into()),
        };
        let mut session = Session {
            client: clients.oci,
            http: clients.http,
            auth: reg_auth,
            token: None,
            scheme: if ep.plain_http { "http" } else { "https" },
            at,
            host: ep.display(),
            original: reference.whole(),
        };
        // Stores the credentials for the blob requests, and gets the token the manifest
        // requests send themselves.
        session.token = session
            .client
            .auth(&session.at, &session.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| session.classify(e))?;
        let want = reference.digest().map(Digest::parse).transpose()?;
        let (top_digest, bytes) = session
            .manifest(&session.at, want.as_ref(), self.cfg.max_manifest_bytes)
            .await?;
        let mut documents = vec![(top_digest.clone(), bytes.clone())];
        let (manifest_digest, manifest) = match manifest::parse(&top_digest, &bytes)? {
            Parsed::Image(m) => (top_digest.clone(), m),
            Parsed::Index(list) => {
                let chosen = manifest::select(&list, &self.cfg.platform).ok_or_else(|| {
                    ImageError::NoMatchingPlatform {
                        digest: top_digest.to_string(),
                        platform: format!(
                            "{}/{}",
                            self.cfg.platform.os, self.cfg.platform.architecture
                        ),
                    }
                })?;
                let d = Digest::parse(&chosen.digest)?;
                let r = session.at.clone_with_digest(d.to_string());
                let (d, b) = session
                    .manifest(&r, Some(&d), self.cfg.max_manifest_bytes)
                    .await?;
                documents.push((d.clone(), b.clone()));
                match manifest::parse(&d, &b)? {
                    Parsed::Image(m) => (d, m),
                    Parsed::Index(_) => {
                        return Err(ImageError::ParseManifest {
                            digest: d.to_string(),
                            reason: "nested index".into(),
                        });
                    }
                }
            }
        };
        Ok(Resolved {
            session,
            top_digest,
            documents,
            manifest_digest,
            manifest,
        })
    }
}

/// A plain HTTP client for `ep` (its CA file and `skip_verify`, as the OCI client's).
fn http_client(ep: &Endpoint) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_certs(ep.skip_verify)
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60));
    if let Some(ca) = &ep.ca_file {
        let pem = std::fs::read(ca).map_err(ImageError::fs("Read CA file", ca))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ImageError::Config(format!("CA file {}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| ImageError::Config(format!("HTTP client: {e}")))
}

/// Trades CRI identity-token credentials for an access token at the endpoint's token service.
async fn identity_token_exchange(ep: &Endpoint, repo: &str, creds: &AuthConfig) -> Result<String> {
    let http = http_client(ep)?;
    let scheme = if ep.plain_http { "http" } else { "https" };
    super::token::exchange(
        &http,
        &format!("{scheme}://{}", ep.host),
        repo,
        &creds.username,
        &creds.identity_token,
    )
    .await
}

impl Session {
    /// Fetches a manifest (at most `max` bytes, refused as it streams in) and checks it
    /// against the digest asked for.
    async fn manifest(
        &self,
        r: &Reference,
        want: Option<&Digest>,
        max: u64,
    ) -> Result<(Digest, bytes::Bytes)> {
        let reference = r.digest().or(r.tag()).unwrap_or("latest");
        let req = fetch::ManifestRequest {
            url: format!(
                "{}://{}/v2/{}/manifests/{reference}",
                self.scheme,
                r.resolve_registry(),
                r.repository()
            ),
            accept: manifest::ACCEPTED,
            token: self.token.as_deref(),
            auth: &self.auth,
            max,
        };
        let bytes = fetch::manifest(&self.http, req)
            .await
            .map_err(|e| match e {
                fetch::ManifestFetchError::Registry(e) => self.classify(e),
                fetch::ManifestFetchError::TooLarge { limit } => ImageError::SizeLimit {
                    what: format!("manifest of {} from {}", self.original, self.host),
                    limit,
                },
            })?;
        let actual = Digest::of(&bytes);
        if let Some(want) = want
            && &actual != want
        {
            {
                return Err(ImageError::DigestMismatch {
                    expected: want.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((actual, bytes))
    }

    /// Opens the byte stream of a blob of `size` bytes from `offset` on, with a range
    /// request (`Range: bytes=<offset>-`, also for 0: a `206` answer is not re-hashed by
    /// the client, the content store hashes every byte anyway). A registry that ignores
    /// the range answers with the whole blob: the stream then starts at 0.
    pub(crate) async fn blob(
        &self,
        digest: &Digest,
        media_type: &str,
        size: u64,
        offset: u64,
    ) -> Result<BlobStream<BoxStream<'static, std::io::Result<bytes::Bytes>>>> {
        let desc = OciDescriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let resp = self
            .client
            .pull_blob_stream_partial(&self.at, &desc, offset, None)
            .await
            .map_err(|e| self.classify(e))?;
        match resp {
            BlobResponse::Full(s) => Ok(BlobStream {
                stream: s.stream,
                offset: 0,
            }),
            BlobResponse::Partial(s) => match s.content_length {
                Some(n) if n != size.saturating_sub(offset) => Err(ImageError::FetchBlob {
                    digest: digest.to_string(),
                    source: std::io::Error::other(format!(
                        "asked for {} bytes from {offset}, the registry sends {n}",
                        size.saturating_sub(offset)
                    )),
                }),
                _ => Ok(BlobStream {
                    stream: s.stream,
                    offset,
                }),
            },
        }
    }

    /// Maps a client error to hull's kinds: not found, refused, or other.
    fn classify(&self, e: OciDistributionError) -> ImageError {
        let (reference, registry) = (self.original.clone(), self.host.clone());
        let not_found = |message: String| ImageError::RegistryNotFound {
            reference: reference.clone(),
            registry: registry.clone(),
            message,
        };
        let refused = |message: String| ImageError::Unauthenticated {
            reference: reference.clone(),
            registry: registry.clone(),
            message,
        };
        match &e {
            OciDistributionError::UnauthorizedError { url } => {
                refused(format!("401 Unauthorized for {url}"))
            }
            OciDistributionError::AuthenticationFailure(m) => refused(m.clone()),
            OciDistributionError::ImageManifestNotFoundError(m) => not_found(m.clone()),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<_> = envelope.errors.iter().map(|x| &x.code).collect();
                let msg = envelope
                    .errors
                    .iter()
                    .map(|x| x.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    refused(msg)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found(msg)
                } else {
                    ImageError::Registry {
                        reference,
                        registry,
                        source: Box::new(e),
                    }
                }
            }
            OciDistributionError::ServerError {
                code: 404, message, ..
            } => not_found(message.clone()),
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => refused(message.clone()),
            _ => ImageError::Registry {
                reference,
                registry,
                source: Box::new(e),
            },
        }
    }
}
