//! An in-memory [`PodNetworking`] for hulld's unit tests: it hands out addresses from
//! 10.99.0.0/16, records which sandboxes hold a network, and fails on demand the way a
//! CNI plugin would, so tests can assert that every failure path leaves nothing live.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::cni::{CniError, ExecError, IpConfig, IpNetwork, NotReady, result::Dns};
use crate::networking::PodNetworking;
use crate::{PodNetworkError, PodNetworkStatus, PodSpec, SetupTimings};

/// What the fake should fail.
#[derive(Debug, Clone, Default)]
pub struct FakeFailures {
    /// `setup` fails (after undoing itself, like the real one) with a CNI ADD error.
    pub setup: bool,
    /// `teardown` fails with a CNI DEL error (and keeps the network live).
    pub teardown: bool,
    /// `ready` reports NotReady with this message.
    pub not_ready: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    live: BTreeMap<String, u32>,
    next: u32,
    failures: FakeFailures,
    setups: u32,
    teardowns: u32,
}

/// The fake pod network.
#[derive(Debug, Default)]
pub struct FakePodNetwork {
    state: Mutex<State>,
}

fn injected(command: crate::cni::Command, sandbox_id: &str) -> CniError {
    let source = ExecError::Plugin {
        plugin: "fake".into(),
        command,
        code: 999,
        msg: "injected failure".into(),
        details: String::new(),
    };
    match command {
        crate::cni::Command::Add => CniError::Add {
            container_id: sandbox_id.into(),
            source,
        },
        crate::cni::Command::Del => CniError::Del {
            container_id: sandbox_id.into(),
            source,
        },
        crate::cni::Command::Check => CniError::Check {
            container_id: sandbox_id.into(),
            source,
        },
    }
}

impl FakePodNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets what fails from now on.
    pub fn set_failures(&self, failures: FakeFailures) {
        self.state().failures = failures;
    }

    /// Sandboxes that currently hold a network.
    pub fn live(&self) -> Vec<String> {
        self.state().live.keys().cloned().collect()
    }

    /// Number of setup and teardown calls so far.
    pub fn calls(&self) -> (u32, u32) {
        let s = self.state();
        (s.setups, s.teardowns)
    }
}

#[async_trait]
impl PodNetworking for FakePodNetwork {
    fn ready(&self) -> Result<(), NotReady> {
        match &self.state().failures.not_ready {
            Some(message) => Err(NotReady {
                reason: "NetworkPluginNotReady".into(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    fn netns_path(&self, sandbox_id: &str) -> Result<PathBuf, PodNetworkError> {
        crate::netns::Netns::sandbox_path(sandbox_id).map_err(PodNetworkError::SandboxId)
    }

    async fn setup(&self, spec: &PodSpec) -> Result<PodNetworkStatus, PodNetworkError> {
        let netns = self.netns_path(&spec.sandbox_id)?;
        let mut s = self.state();
        s.setups += 1;
        if s.failures.setup {
            return Err(PodNetworkError::CniAdd(injected(
                crate::cni::Command::Add,
                &spec.sandbox_id,
            )));
        }
        let n = match s.live.get(&spec.sandbox_id) {
            Some(n) => *n,
            None => {
                s.next += 1;
                let n = s.next;
                s.live.insert(spec.sandbox_id.clone(), n);
                n
            }
        };
        let [_, _, hi, lo] = (n + 1).to_be_bytes();
        let addr = IpAddr::V4(Ipv4Addr::new(10, 99, hi, lo));
        Ok(PodNetworkStatus {
            netns,
            tap: crate::tap::TAP_NAME.into(),
            mac: format!("02:00:0a:63:{hi:02x}:{lo:02x}"),
            mtu: 1500,
            ips: vec![IpConfig {
                address: IpNetwork {
                    addr,
                    prefix_len: 16,
                },
                gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1))),
                interface: Some(0),
            }],
            routes: Vec::new(),
            dns: Dns::default(),
            cni_result: serde_json::Value::Null,
            timings: SetupTimings::default(),
        })
    }

    async fn check(&self, sandbox_id: &str) -> Result<(), PodNetworkError> {
        if self.state().live.contains_key(sandbox_id) {
            Ok(())
        } else {
            Err(PodNetworkError::CniCheck(injected(
                crate::cni::Command::Check,
                sandbox_id,
            )))
        }
    }

    async fn teardown(&self, sandbox_id: &str) -> Result<(), PodNetworkError> {
        let mut s = self.state();
        s.teardowns += 1;
        if s.failures.teardown {
            return Err(PodNetworkError::CniDel(injected(
                crate::cni::Command::Del,
                sandbox_id,
            )));
        }
        s.live.remove(sandbox_id);
        Ok(())
    }

    fn attachments(&self) -> Vec<String> {
        self.live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_tracks_live_networks_and_fails_on_demand() -> Result<(), PodNetworkError> {
        let fake = FakePodNetwork::new();
        let spec = PodSpec {
            sandbox_id: "a".into(),
            ..PodSpec::default()
        };
        let st = fake.setup(&spec).await?;
        assert_eq!(st.ips[0].address.to_string(), "10.99.0.2/16");
        assert_eq!(fake.live(), vec!["a".to_string()]);
        fake.check("a").await?;
        fake.set_failures(FakeFailures {
            setup: true,
            ..FakeFailures::default()
        });
        let b = PodSpec {
            sandbox_id: "b".into(),
            ..PodSpec::default()
        };
        let err = fake
            .setup(&b)
            .await
            .err()
            .map(|e| crate::cni::error_chain(&e));
        assert!(err.is_some_and(|e| e.contains("injected failure")));
        assert_eq!(fake.live(), vec!["a".to_string()]);
        fake.set_failures(FakeFailures {
            teardown: true,
            ..FakeFailures::default()
        });
        assert!(fake.teardown("a").await.is_err());
        fake.set_failures(FakeFailures::default());
        fake.teardown("a").await?;
        fake.teardown("a").await?;
        assert!(fake.live().is_empty());
        assert_eq!(fake.calls(), (2, 3));
        Ok(())
    }
}
