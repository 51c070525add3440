//! A quick look at the CNI conf dir, for the NetworkReady condition.

use std::path::{Path, PathBuf};

/// The network config CNI will use: the lexically first `.conflist`, `.conf` or `.json`
/// file in `dir` that is a valid network config (containerd and CRI-O pick the same way).
/// The error is a message for the condition.
pub fn find_network_config(dir: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read CNI config dir {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        match check_file(&file) {
            Ok(()) => return Ok(file),
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
    }
    if problems.is_empty() {
        Err(format!("no network config found in {}", dir.display()))
    } else {
        Err(format!(
            "no usable network config in {}: {}",
            dir.display(),
            problems.join("; ")
        ))
    }
}

fn check_file(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if value.get("name").and_then(|n| n.as_str()).is_none() {
        return Err("no \"name\"".into());
    }
    let is_list = file.extension().and_then(|e| e.to_str()) == Some("conflist");
    if is_list {
        let plugins = value.get("plugins").and_then(|p| p.as_array());
        match plugins {
            Some(p) if !p.is_empty() && p.iter().all(|p| p.get("type").is_some()) => Ok(()),
            _ => Err("\"plugins\" must be a non-empty list of plugins with a \"type\"".into()),
        }
    } else if value.get("type").and_then(|t| t.as_str()).is_some() {
        Ok(())
    } else {
        Err("no \"type\"".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_valid_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(dir.path().join("README"), "not a config").unwrap();
        std::fs::write(
            dir.path().join("10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-other.conf"),
            r#"{"cniVersion":"1.0.0","name":"o","type":"bridge"}"#,
        )
        .unwrap();
        let found = find_network_config(dir.path()).unwrap();
        assert!(found.ends_with("10-net.conflist"));
    }

    #[test]
    fn empty_or_invalid_dirs_explain_why() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_network_config(dir.path()).unwrap_err();
        assert!(err.contains("no network config found"), "{err}");
        std::fs::write(
            dir.path().join("a.conflist"),
            r#"{"name":"x","plugins":[]}"#,
        )
        .unwrap();
        let err = find_network_config(dir.path()).unwrap_err();
        assert!(
            err.contains("a.conflist") && err.contains("plugins"),
            "{err}"
        );
        let err = find_network_config(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot read CNI config dir"), "{err}");
    }
}
