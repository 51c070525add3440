//! What one hull-vmm process runs: read from a JSON file (`--config`, written by the hull
//! backend) or CLI flags, and validated before anything is created.

use std::path::PathBuf;

/// Most vCPUs we give one VM (the MP table and IOAPIC routing are sized for this).
pub const MAX_VCPUS: u32 = 32;

/// Smallest VM hull-vmm builds: the kernel, its page tables and an initramfs need room.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest VM hull-vmm builds (keeps the address arithmetic far from overflow).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The guest's vsock device, bridged to a host unix socket (hybrid vsock).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (≥ 3).
    pub guest_cid: u32,
    /// Host socket: hosts connect here and send `CONNECT <port>\n`; guest-initiated
    /// connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A virtio-blk disk backed by a host file (raw image).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlkConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// A virtio-net NIC on an existing tap device, opened by name in hull-vmm's network
/// namespace (hull-vmm runs inside the pod's netns, where the CNI made the tap); without a
/// tap, a NIC with no backend (a VM template's: frames sent are dropped, nothing arrives).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface name, e.g. `tap0` (at most 15 bytes); `None` for no backend.
    #[serde(default)]
    pub tap: Option<String>,
    /// The guest NIC's MAC, `aa:bb:cc:dd:ee:ff`; when absent the guest picks a random one.
    #[serde(default)]
    pub mac: Option<String>,
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd) listening on `socket`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// virtiofsd's vhost-user socket (it must be listening when hull-vmm starts).
    pub socket: PathBuf,
    /// The mount tag the guest uses (`mount -t virtiofs <tag> /mnt`), 1..=36 bytes.
    pub tag: String,
}

/// Longest virtio-fs tag (the config space field is 36 bytes).
pub const MAX_FS_TAG_LEN: usize = 36;

/// Parse `aa:bb:cc:dd:ee:ff` (hex, either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A full hull-vmm configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// Sandbox id, for logs.
    #[serde(default)]
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Kernel: ELF vmlinux (PVH entry used if present) or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Extra command-line arguments, after hull-vmm's own (`console=ttyS0 ...`) and the
    /// virtio-mmio devices.
    #[serde(default)]
    pub cmdline: String,
    /// Where the serial console goes (default: discarded).
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Control API socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// Add a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub blk: Option<BlkConfig>,
    #[serde(default)]
    pub net: Option<NetConfig>,
    #[serde(default)]
    pub fs: Option<FsConfig>,
}

/// Errors in a configuration, found before anything is created.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Failed to read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to parse config file {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("vcpus must be 1..={MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    #[error("memory_mib must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}, got {0}")]
    Memory(u64),
    #[error("Missing {what} at {path}")]
    Missing { what: &'static str, path: String },
    #[error("vsock guest_cid must be at least 3, got {0}")]
    GuestCid(u32),
    #[error("net tap name must be 1..=15 bytes without '/' or whitespace, got {0:?}")]
    TapName(String),
    #[error("net mac must look like aa:bb:cc:dd:ee:ff and be unicast, got {0:?}")]
    Mac(String),
    #[error("fs tag must be 1..={MAX_FS_TAG_LEN} bytes, got {0:?}")]
    FsTag(String),
    #[error("fs socket must be an absolute path, got {0}")]
    FsSocket(String),
}

impl VmmConfig {
    /// Read and validate a JSON config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        // The kernel and initramfs are checked when a VM is built to boot them (a restored
        // VM does not load them).
        config.validate_for_restore()?;
        Ok(config)
    }

    /// Check sizes and that the files exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(true)
    }

    /// [`Self::validate`] for a VM restored from a snapshot: the kernel and initramfs are
    /// not loaded, so they need not exist.
    pub fn validate_for_restore(&self) -> Result<(), ConfigError> {
        self.check(false)
    }

    fn check(&self, boot: bool) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        let must_exist = |what, path: &PathBuf| {
            if path.is_file() {
                Ok(())
            } else {
                Err(ConfigError::Missing {
                    what,
                    path: path.display().to_string(),
                })
            }
        };
        if boot {
            must_exist("kernel", &self.kernel)?;
            if let Some(initrd) = &self.initramfs {
                must_exist("initramfs", initrd)?;
            }
        }
        if let Some(blk) = &self.blk {
            must_exist("disk image", &blk.path)?;
        }
        if let Some(vsock) = &self.vsock
            && vsock.guest_cid < 3
        {
            return Err(ConfigError::GuestCid(vsock.guest_cid));
        }
        if let Some(net) = &self.net {
            net.validate()?;
        }
        if let Some(fs) = &self.fs {
            fs.validate()?;
        }
        Ok(())
    }
}

impl NetConfig {
    /// The tap name fits `IFNAMSIZ` and the MAC parses as a unicast address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad_char = |c: char| c == '/' || c.is_whitespace() || c == '\0';
        if let Some(tap) = &self.tap
            && (tap.is_empty() || tap.len() > 15 || tap.contains(bad_char))
        {
            return Err(ConfigError::TapName(tap.clone()));
        }
        if let Some(mac) = &self.mac {
            match parse_mac(mac) {
                // Bit 0 of the first byte set = multicast; all zeros is no address either.
                Some(bytes) if bytes[0] & 1 == 0 && bytes != [0; 6] => {}
                _ => return Err(ConfigError::Mac(mac.clone())),
            }
        }
        Ok(())
    }

    /// The MAC as bytes (`None` when not configured); call after [`Self::validate`].
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(parse_mac)
    }
}

impl FsConfig {
    /// The tag fits the config space and the socket path is absolute.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG_LEN || self.tag.contains('\0') {
            return Err(ConfigError::FsTag(self.tag.clone()));
        }
        if !self.socket.is_absolute() {
            return Err(ConfigError::FsSocket(self.socket.display().to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(kernel: PathBuf) -> VmmConfig {
        VmmConfig {
            id: "t".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initramfs: None,
            cmdline: String::new(),
            console_log: None,
            api_socket: None,
            rng: false,
            vsock: None,
            blk: None,
            net: None,
            fs: None,
        }
    }

    #[test]
    fn json_round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let path = dir.path().join("c.json");
        let json = format!(
            r#"{{"vcpus":2,"memory_mib":256,"kernel":"{}","rng":true,
                "vsock":{{"guest_cid":3,"uds_path":"/tmp/v.sock"}}}}"#,
            kernel.display()
        );
        std::fs::write(&path, json).unwrap();
        let c = VmmConfig::from_file(&path).unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.rng), (2, 256, true));
        assert_eq!(c.vsock.unwrap().guest_cid, 3);
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let mut c = base(kernel.clone());
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(0))));
        let mut c = base(kernel.clone());
        c.memory_mib = 1;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(1))));
        let mut c = base(dir.path().join("nope"));
        c.vcpus = 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Missing { what: "kernel", .. })
        ));
        let mut c = base(kernel);
        c.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/x".into(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::GuestCid(2))));
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"vcpus":1,"unknown":1}"#).unwrap();
        assert!(matches!(
            VmmConfig::from_file(&path),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn net_and_fs_parse_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let path = dir.path().join("c.json");
        let json = format!(
            r#"{{"vcpus":1,"memory_mib":128,"kernel":"{}",
                "net":{{"tap":"tap0","mac":"02:00:0A:00:00:05"}},
                "fs":{{"socket":"/run/hull/p/virtiofsd.sock","tag":"hullfs"}}}}"#,
            kernel.display()
        );
        std::fs::write(&path, json).unwrap();
        let c = VmmConfig::from_file(&path).unwrap();
        let net = c.net.unwrap();
        assert_eq!(net.tap.as_deref(), Some("tap0"));
        assert_eq!(net.mac_bytes(), Some([2, 0, 0x0a, 0, 0, 5]));
        let fs = c.fs.unwrap();
        assert_eq!(
            (fs.tag.as_str(), fs.socket.to_str()),
            ("hullfs", Some("/run/hull/p/virtiofsd.sock"))
        );

        let net = |tap: &str, mac: Option<&str>| NetConfig {
            tap: Some(tap.into()),
            mac: mac.map(Into::into),
        };
        assert!(net("tap0", None).validate().is_ok());
        let tapless = NetConfig {
            tap: None,
            mac: Some("02:00:00:00:00:09".into()),
        };
        assert!(tapless.validate().is_ok());
        assert!(net("tap0", None).mac_bytes().is_none());
        for tap in ["", "a/b", "tap 0", "sixteen-bytes-xx"] {
            assert!(
                matches!(net(tap, None).validate(), Err(ConfigError::TapName(_))),
                "{tap}"
            );
        }
        for mac in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "01:00:00:00:00:00",
            "2:00:00:00:00:000",
            "00:00:00:00:00:00",
        ] {
            assert!(
                matches!(net("tap0", Some(mac)).validate(), Err(ConfigError::Mac(_))),
                "{mac}"
            );
        }
        let fs = |socket: &str, tag: &str| FsConfig {
            socket: socket.into(),
            tag: tag.into(),
        };
        assert!(fs("/s", &"t".repeat(36)).validate().is_ok());
        assert!(matches!(
            fs("/s", "").validate(),
            Err(ConfigError::FsTag(_))
        ));
        assert!(matches!(
            fs("/s", &"t".repeat(37)).validate(),
            Err(ConfigError::FsTag(_))
        ));
        assert!(matches!(
            fs("rel.sock", "t").validate(),
            Err(ConfigError::FsSocket(_))
        ));
        let mut c = base(kernel);
        c.fs = Some(fs("/s", ""));
        assert!(matches!(c.validate(), Err(ConfigError::FsTag(_))));
        std::fs::write(
            &path,
            r#"{"vcpus":1,"memory_mib":128,"kernel":"/k","net":{"tap":"t","x":1}}"#,
        )
        .unwrap();
        assert!(matches!(
            VmmConfig::from_file(&path),
            Err(ConfigError::Parse { .. })
        ));
    }
}
