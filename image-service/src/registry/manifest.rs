//! The parts of manifests, indexes and image configs hull needs (Docker v2 schema 2 and OCI).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::PlatformConfig;
use crate::content::Digest;
use crate::error::{ImageError, Result};

pub(crate) const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest or an index: which one is decided by its fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    schema_version: Option<u32>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A single-platform image manifest.
#[derive(Debug)]
pub(crate) struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Image(ImageManifest),
}

pub(crate) fn parse(digest: &Digest, bytes: &[u8]) -> Result<Parsed> {
    let bad = |reason: String| ImageError::ParseManifest {
        digest: digest.to_string(),
        reason,
    };
    let m: AnyManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if m.schema_version != Some(2) {
        return Err(bad(format!(
            "unsupported schemaVersion {:?}",
            m.schema_version
        )));
    }
    match (m.manifests, m.config, m.layers) {
        (Some(list), _, _) => Ok(Parsed::Index(list)),
        (None, Some(config), Some(layers)) => Ok(Parsed::Image(ImageManifest {
            config,
            layers,
            annotations: m.annotations,
        })),
        _ => Err(bad("neither an image manifest nor an index".into())),
    }
}

/// Picks the manifest for `want` from an index; an empty wanted variant matches any.
pub(crate) fn select<'a>(list: &'a [Descriptor], want: &PlatformConfig) -> Option<&'a Descriptor> {
    list.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && (want.variant.is_empty() || p.variant.as_deref() == Some(want.variant.as_str()))
        })
    })
}

/// The image config fields hull uses.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

pub(crate) fn parse_config(digest: &Digest, bytes: &[u8]) -> Result<ImageConfig> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::ParseManifest {
        digest: digest.to_string(),
        reason: e.to_string(),
    })
}

/// The CRI `uid`/`username` of an image `User` (`1000`, `1000:1000`, `nobody`, `nobody:grp`).
pub(crate) fn user_of(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1000"), (Some(1000), String::new()));
        assert_eq!(user_of("1000:50"), (Some(1000), String::new()));
        assert_eq!(user_of("nobody:nogroup"), (None, "nobody".into()));
    }

    #[test]
    fn select_platform() {
        let idx = br#"{"schemaVersion":2,"manifests":[
          {"mediaType":"m","digest":"sha256:a","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
          {"mediaType":"m","digest":"sha256:b","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let Parsed::Index(list) = parse(&Digest::of(idx), idx).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            select(&list, &PlatformConfig::default()).unwrap().digest,
            "sha256:b"
        );
        let arm = PlatformConfig {
            architecture: "arm64".into(),
            ..Default::default()
        };
        assert_eq!(select(&list, &arm).unwrap().digest, "sha256:a");
        let s390 = PlatformConfig {
            architecture: "s390x".into(),
            ..Default::default()
        };
        assert!(select(&list, &s390).is_none());
        assert!(parse(&Digest::of(b"{}"), b"{\"schemaVersion\":1}").is_err());
    }
}
