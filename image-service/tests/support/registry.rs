//! A real Debian `docker-registry` on 127.0.0.1, started and stopped by the test.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed on drop.
pub struct TestRegistry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub auth: Option<(String, String)>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// Starts a registry protected by htpasswd with one user.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::spawn(Some((user.to_string(), password.to_string())))
    }

    fn spawn(auth: Option<(String, String)>) -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} missing: apt-get install docker-registry"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut auth_yaml = String::new();
        if let Some((u, p)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .unwrap_or_else(|e| {
                    panic!("htpasswd (bcrypt) missing: apt-get install apache2-utils ({e})")
                });
            assert!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("write htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: hull-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).expect("write registry config");
        let log = dir.path().join("registry.log");
        let logf = std::fs::File::create(&log).expect("create registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn docker-registry");
        let reg = Self {
            child,
            port,
            dir,
            log,
            auth,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not come up; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many GET requests for `digest`'s blob the registry served.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("/blobs/{digest} ");
        log.lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    /// The on-disk file holding a blob (to corrupt it).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
