//! rtnetlink: reading and changing links. Each function names its iproute2 equivalent.
//!
//! One [`Netlink`] wraps one rtnetlink socket, bound to the network namespace of the thread
//! that created it. Bridge and VLAN operations live in [`crate::linuxbr`].

use futures::TryStreamExt;
use netlink_packet_core::Nla;
use netlink_packet_route::link::{InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State};
use rtnetlink::{Handle, LinkUnspec};

use crate::ifname::IfName;
use crate::switch::MacAddr;
use crate::sys::tap::Mode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("Netlink request failed: {what}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

impl Error {
    fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let what = what.into();
        move |source| Error::Request { what, source }
    }

    /// The errno the kernel answered with, if this is a kernel NACK.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request { source: rtnetlink::Error::NetlinkError(m), .. } => m.code.map(|c| -c.get()),
            Error::Connect(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What `IFLA_INFO_DATA` of a `tun` link says (`drivers/net/tun.c` `tun_fill_info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunInfo {
    pub mode: Option<Mode>,
    pub pi: bool,
    pub vnet_hdr: bool,
    pub persist: bool,
    pub multi_queue: bool,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Queues currently attached by some process (QEMU, vmnetd, ...).
    pub num_queues: u32,
}

const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PI: u16 = 4;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;

impl TunInfo {
    fn parse(nlas: &[InfoTun]) -> TunInfo {
        let mut t = TunInfo::default();
        for nla in nlas {
            let mut v = vec![0u8; nla.value_len()];
            nla.emit_value(&mut v);
            let u8v = v.first().copied().unwrap_or(0);
            let u32v = v.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            match nla.kind() {
                IFLA_TUN_OWNER => t.owner = u32v,
                IFLA_TUN_GROUP => t.group = u32v,
                IFLA_TUN_TYPE => {
                    t.mode = match u8v {
                        1 => Some(Mode::Tun),
                        2 => Some(Mode::Tap),
                        _ => None,
                    }
                }
                IFLA_TUN_PI => t.pi = u8v != 0,
                IFLA_TUN_VNET_HDR => t.vnet_hdr = u8v != 0,
                IFLA_TUN_PERSIST => t.persist = u8v != 0,
                IFLA_TUN_MULTI_QUEUE => t.multi_queue = u8v != 0,
                IFLA_TUN_NUM_QUEUES => t.num_queues = u32v.unwrap_or(0),
                _ => {}
            }
        }
        t
    }
}

/// The parts of a link vmnetd looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("tun", "bridge", "veth", ...); `None` for physical NICs and loopback.
    pub kind: Option<String>,
    pub tun: Option<TunInfo>,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub alias: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub oper_up: bool,
    /// `IFLA_CARRIER`: for a TAP, whether some process has a queue attached.
    pub carrier: bool,
    /// Index of the bridge (or bond) this link is enslaved to.
    pub controller: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut l = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            tun: None,
            mtu: None,
            mac: None,
            alias: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            carrier: false,
            controller: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(m) => l.mtu = Some(*m),
                LinkAttribute::Address(a) => l.mac = MacAddr::from_slice(a),
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::OperState(s) => l.oper_up = *s == State::Up,
                LinkAttribute::Carrier(c) => l.carrier = *c != 0,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Tun(t)) => l.tun = Some(TunInfo::parse(t)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if l.kind.as_deref() == Some("tun") && l.tun.is_none() {
            l.tun = Some(TunInfo::default());
        }
        l
    }

    /// Queues of a TAP that processes hold open. The kernel reports a count only for
    /// multi-queue devices; a single-queue TAP has carrier exactly while it is attached.
    pub fn tap_queues_attached(&self) -> u32 {
        match &self.tun {
            Some(t) if t.multi_queue => t.num_queues,
            Some(_) => u32::from(self.carrier),
            None => 0,
        }
    }

    pub fn is_tun(&self) -> bool {
        self.kind.as_deref() == Some(&InfoKind::Tun.to_string())
    }
}

/// Changes to apply to a link in one `RTM_NEWLINK` (`ip link set dev X ...`).
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub alias: Option<String>,
    pub up: Option<bool>,
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink socket in the caller's network namespace and spawns its connection
    /// task on the current tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// `ip -d link show dev NAME`. `Ok(None)` if there is no such link.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_owned()).execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::request(format!("show link {name}"))(e)),
        }
    }

    /// `ip -d link show` by index.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::request(format!("show link #{index}"))(e)),
        }
    }

    /// `ip -d link show` (all links).
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = s.try_next().await.map_err(Error::request("list links"))? {
            out.push(Link::from_message(&msg));
        }
        Ok(out)
    }

    /// `ip link set dev NAME [mtu N] [address MAC] [alias A] [up|down]`.
    pub async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(m) = change.mtu {
            b = b.mtu(m);
        }
        if let Some(mac) = change.mac {
            b = b.address(mac.0.to_vec());
        }
        if let Some(a) = &change.alias {
            b = b.alias(a.clone());
        }
        match change.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(Error::request(format!("set link #{index} {change:?}")))
    }

    /// `ip link del dev NAME`. Deleting a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| -c.get()) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(Error::request(format!("delete link #{index}"))(e)),
        }
    }

    /// Convenience for callers that hold a validated name.
    pub async fn link(&self, name: &IfName) -> Result<Option<Link>> {
        self.link_by_name(name.as_str()).await
    }
}
