//! An rtnetlink session bound to a pod's network namespace.
//!
//! The netlink socket is created on a [`Netns::run_async`] thread (a socket belongs to the
//! namespace it was created in), registered with the caller's tokio runtime, and then used
//! from ordinary async code: no tokio thread ever changes namespace.

use futures::TryStreamExt;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use crate::netns::{Netns, NetnsError};

/// Errors of netlink operations.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("Failed to open a netlink socket in the pod netns")]
    Connect(#[source] std::io::Error),
    #[error("Failed to enter the pod netns for netlink")]
    Netns(#[from] NetnsError),
    #[error("No tokio runtime to drive netlink")]
    NoRuntime,
    #[error("Interface {0} not found")]
    LinkNotFound(String),
    #[error("Failed to look up interface {name}")]
    GetLink {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("Failed to configure interface {name}")]
    SetLink {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("Failed to delete interface {name}")]
    DelLink {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// The kernel errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// What hull needs to know about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, empty if the link has no hardware address.
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: String::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name.clone_from(n),
                LinkAttribute::Address(a) => info.mac = format_mac(a),
                LinkAttribute::Mtu(m) => info.mtu = *m,
                _ => {}
            }
        }
        info
    }
}

/// Formats a hardware address as lowercase colon-separated hex.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A netlink handle whose socket lives in a pod's netns. The connection task stops when
/// this is dropped.
#[derive(Debug)]
pub struct NetnsLink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NetnsLink {
    /// Opens a netlink session inside `netns`.
    pub async fn connect(netns: &Netns) -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (conn, handle, _) = netns
            .run_async(move || {
                let _entered = rt.enter();
                rtnetlink::new_connection()
            })
            .await?
            .map_err(NetlinkError::Connect)?;
        let task = tokio::spawn(conn);
        Ok(Self { handle, task })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Looks an interface up by name; `None` if it does not exist.
    pub async fn find_link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(NetlinkError::GetLink {
                name: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Looks an interface up by name; an error if it does not exist.
    pub async fn link(&self, name: &str) -> Result<LinkInfo, NetlinkError> {
        self.find_link(name)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound(name.to_owned()))
    }

    /// Sets the MTU (if given) and brings the interface up.
    pub async fn set_up(&self, name: &str, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut msg = LinkUnspec::new_with_name(name).up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|source| NetlinkError::SetLink {
                name: name.to_owned(),
                source: Box::new(source),
            })
    }

    /// Deletes an interface; succeeds if it does not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.find_link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(source) => Err(NetlinkError::DelLink {
                name: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }
}
