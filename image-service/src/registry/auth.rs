//! CRI `AuthConfig` → registry credentials.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

use crate::config::AuthConfig;
use crate::error::{ImageError, Result};

/// Turns CRI-style credentials into what the registry client sends. The identity token
/// (an OAuth2 refresh token) is exchanged separately by the caller (see `token.rs`); here
/// it yields `None` so the caller knows to do that.
pub(crate) fn registry_auth(a: &AuthConfig) -> Result<Option<RegistryAuth>> {
    if !a.registry_token.is_empty() {
        return Ok(Some(RegistryAuth::Bearer(a.registry_token.clone())));
    }
    if !a.identity_token.is_empty() {
        return Ok(None);
    }
    if !a.username.is_empty() {
        return Ok(Some(RegistryAuth::Basic(
            a.username.clone(),
            a.password.clone(),
        )));
    }
    if !a.auth.is_empty() {
        let (user, pass) = decode_auth(&a.auth)?;
        return Ok(Some(RegistryAuth::Basic(user, pass)));
    }
    Ok(Some(RegistryAuth::Anonymous))
}

/// Decodes the docker `auth` field: base64 of `user:password`.
pub(crate) fn decode_auth(auth: &str) -> Result<(String, String)> {
    let bad = |why: &str| ImageError::InvalidArgument(format!("auth field: {why}"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad("not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| bad("not user:password"))?;
    Ok((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_variants() {
        let basic = AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(
            matches!(registry_auth(&basic).unwrap(), Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p")
        );
        let b64 = AuthConfig {
            auth: "dTpwOmM=".into(),
            ..Default::default()
        }; // u:p:c
        assert!(
            matches!(registry_auth(&b64).unwrap(), Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p:c")
        );
        let tok = AuthConfig {
            registry_token: "t".into(),
            ..Default::default()
        };
        assert!(matches!(registry_auth(&tok).unwrap(), Some(RegistryAuth::Bearer(t)) if t == "t"));
        let id = AuthConfig {
            identity_token: "r".into(),
            ..Default::default()
        };
        assert!(registry_auth(&id).unwrap().is_none());
        assert!(matches!(
            registry_auth(&AuthConfig::default()).unwrap(),
            Some(RegistryAuth::Anonymous)
        ));
        let bad = AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert_eq!(
            registry_auth(&bad).unwrap_err().code(),
            crate::ErrorKind::InvalidArgument
        );
    }
}
