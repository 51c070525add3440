//! The pod's tap device.
//!
//! hull creates `tap0` inside the pod netns as a *persistent* tap (`TUNSETPERSIST`), with
//! `IFF_TAP | IFF_NO_PI`, and closes its fd. The VMM, started in the same netns, opens it
//! again by name (`TUNSETIFF` on `/dev/net/tun`, adding `IFF_VNET_HDR` if it wants the
//! virtio-net header; those flags may differ per open). Persisting by name instead of
//! handing over an fd keeps hulld free of per-VM fds, lets a restarted VMM reattach, and
//! lets [`crate::PodNetwork::teardown`] find and delete the tap after a hulld restart.
//!
//! The tap gets eth0's MTU; the guest NIC gets eth0's MAC (as in Kata's tcfilter model),
//! so the bridge keeps seeing the MAC it learned for the pod's IP; eth0 keeps its MAC too.

use crate::netlink::{LinkInfo, NetlinkError, NetnsLink};
use crate::netns::{Netns, NetnsError};
use crate::sys;

/// Name of the tap inside each pod netns.
pub const TAP_NAME: &str = "tap0";

/// Errors of tap handling.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Failed to enter the pod netns to create the tap")]
    Netns(#[from] NetnsError),
    #[error("Failed to create tap {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to configure tap {name}")]
    Configure {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("Failed to delete tap {name}")]
    Delete {
        name: String,
        #[source]
        source: NetlinkError,
    },
}

/// Creates the persistent tap `name` in `netns`, sets its MTU and brings it up.
pub async fn create(
    netns: &Netns,
    link: &NetnsLink,
    name: &str,
    mtu: u32,
) -> Result<LinkInfo, TapError> {
    let owned = name.to_owned();
    netns
        .run_async(move || {
            let fd = sys::open_tap(&owned, false)?;
            sys::set_tap_persist(&fd, true)
        })
        .await?
        .map_err(|source| TapError::Create {
            name: name.to_owned(),
            source,
        })?;
    let configure = async {
        link.set_up(name, Some(mtu)).await?;
        link.link(name).await
    };
    match configure.await {
        Ok(info) => Ok(info),
        Err(source) => {
            let _ = link.delete_link(name).await;
            Err(TapError::Configure {
                name: name.to_owned(),
                source,
            })
        }
    }
}

/// Deletes the tap; succeeds if it does not exist.
pub async fn delete(link: &NetnsLink, name: &str) -> Result<(), TapError> {
    link.delete_link(name)
        .await
        .map(|_| ())
        .map_err(|source| TapError::Delete {
            name: name.to_owned(),
            source,
        })
}

/// Opens a queue of the tap `name` in `netns` (what a VMM does; tests use it to read and
/// write frames). Blocking.
pub fn open_queue(
    netns: &Netns,
    name: &str,
    vnet_hdr: bool,
) -> Result<std::os::fd::OwnedFd, TapError> {
    let owned = name.to_owned();
    netns
        .run(move || sys::open_tap(&owned, vnet_hdr))?
        .map_err(|source| TapError::Create {
            name: name.to_owned(),
            source,
        })
}
