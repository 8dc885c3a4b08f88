//! Bridge backends: what a declared bridge and its ports become in the system.
//!
//! [`BridgeBackend`] is the one shape of both kinds:
//! - [`builtin::Builtin`]: vmnetd's userspace switch on the datapath thread; ports are
//!   edges (AF_PACKET on a netdev, an internal TAP, a vhost-user device);
//! - [`linux::Linux`]: a kernel Linux bridge over rtnetlink; ports are enslaved interfaces
//!   with their VLANs.
//!
//! The daemon's request handlers and the reconciler talk to [`BridgeBackend`] only; nothing
//! outside this module branches on the kind of a bridge. A backend works from a [`Ctx`]
//! (handles it can clone and use without the daemon's lock), so slow work — netlink calls,
//! starting a socket — happens outside that lock.

pub mod builtin;
pub mod linux;
#[cfg(all(test, feature = "root-tests"))]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::api::{
    ApiError, BridgeKind, BridgeSpec, Counters, ErrorKind, FdbRow, KernelVlan, PortKind, PortSpec, PortStatus,
    VhostInfo, VxlanInfo,
};
use crate::datapath::capture::Sink;
use crate::datapath::DatapathHandle;
use crate::ifname::IfName;
use crate::netlink::{Link, Netlink};
use crate::state::{Attached, BridgeDecl, PortDecl};
use crate::switch::VlanId;
use crate::tap::Policy;

/// What a backend works with: handles, not the daemon's state.
#[derive(Clone)]
pub struct Ctx {
    pub nl: Netlink,
    pub dp: Arc<DatapathHandle>,
    /// Where relative vhost-user socket paths are.
    pub run_dir: PathBuf,
    /// TAPs vmnetd declares (config and state): `(name, owner uid)`.
    pub taps: Arc<[(IfName, Option<u32>)]>,
}

impl Ctx {
    /// A vhost-user socket path made absolute (relative paths are in the run dir).
    pub fn socket_path(&self, path: &std::path::Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.run_dir.join(path)
        }
    }

    pub fn declares_tap(&self, name: &IfName) -> bool {
        self.taps.iter().any(|(n, _)| n == name)
    }
}

/// A port as `port list` and `stats` show it: its status and what its bridge knows of it.
#[derive(Debug, Clone)]
pub struct PortView {
    pub status: PortStatus,
    pub counters: Option<Counters>,
    pub vhost: Option<VhostInfo>,
    pub kernel_vlans: Option<Vec<KernelVlan>>,
    pub vxlan: Option<VxlanInfo>,
    /// A netdev port's I/O (`tpacket`, `mmsg`).
    pub io: Option<String>,
}

impl PortView {
    pub fn of(status: PortStatus) -> PortView {
        PortView { status, counters: None, vhost: None, kernel_vlans: None, vxlan: None, io: None }
    }
}

/// One kind of bridge.
pub trait BridgeBackend: Send + Sync {
    /// Makes a declared bridge exist: create it, or adopt what is there. Returns whether a
    /// kernel device was created now.
    fn create<'a>(&'a self, cx: &'a Ctx, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<bool, ApiError>>;

    /// Takes a bridge away (its ports are gone already). A kernel bridge vmnetd adopted
    /// stays.
    fn destroy<'a>(&'a self, cx: &'a Ctx, decl: &'a BridgeDecl) -> BoxFuture<'a, ()>;

    /// Refuses, before anything changes, a port this kind of bridge cannot have.
    fn check_port(&self, spec: &PortSpec) -> Result<(), ApiError>;

    /// Connects a declared port. Returns whether a kernel device was created for it.
    fn attach<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl, policy: Policy) -> BoxFuture<'a, Result<bool, ApiError>>;

    /// Changes an attached port's VLANs, addresses, isolation or policers in place (its
    /// edge, and a guest behind it, untouched). `Ok(false)`: this change cannot be made in
    /// place; the caller detaches and attaches the port instead.
    fn reconfigure<'a>(
        &'a self,
        _cx: &'a Ctx,
        _old: &'a PortDecl,
        _new: &'a PortDecl,
    ) -> BoxFuture<'a, Result<bool, ApiError>> {
        Box::pin(async { Ok(false) })
    }

    /// Disconnects a port; deletes what vmnetd created for it.
    fn detach<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl) -> BoxFuture<'a, ()>;

    /// The ports' views, in order: one pass for all of them (a bridge with a thousand
    /// ports costs one netlink dump, not a thousand).
    fn views<'a>(&'a self, cx: &'a Ctx, decls: &'a [PortDecl]) -> BoxFuture<'a, Result<Vec<PortView>, ApiError>>;

    /// Entries of the bridge's learning table.
    fn fdb<'a>(
        &'a self,
        cx: &'a Ctx,
        bridge: &'a IfName,
        vlan: Option<VlanId>,
    ) -> BoxFuture<'a, Result<Vec<FdbRow>, ApiError>>;

    /// How many addresses the bridge's learning table holds (`bridge list`).
    fn fdb_entries<'a>(&'a self, cx: &'a Ctx, bridge: &'a IfName) -> BoxFuture<'a, Result<usize, ApiError>>;

    /// Forgets learned addresses; returns how many.
    fn flush_fdb<'a>(&'a self, cx: &'a Ctx, bridge: &'a IfName) -> BoxFuture<'a, Result<usize, ApiError>>;

    /// Starts a capture on a port.
    fn capture<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl, sink: Sink) -> BoxFuture<'a, Result<(), ApiError>>;

    /// Whether a port in this status wants the reconciler (re-attach, re-enslave, VLANs).
    fn needs_repair(&self, status: &PortStatus) -> bool;
}

static BUILTIN: builtin::Builtin = builtin::Builtin;
static LINUX: linux::Linux = linux::Linux;

/// The backend of a kind of bridge: the one place the kinds are told apart.
pub fn backend(kind: BridgeKind) -> &'static dyn BridgeBackend {
    match kind {
        BridgeKind::Builtin => &BUILTIN,
        BridgeKind::Linux => &LINUX,
    }
}

/// The interfaces named `names` (those that exist), by name: a lookup each for a few, one
/// dump for many.
pub async fn links_named(cx: &Ctx, names: &[IfName]) -> Result<HashMap<String, Link>, ApiError> {
    if names.len() <= 16 {
        let mut out = HashMap::new();
        for n in names {
            if let Some(l) = cx.nl.link(n).await.map_err(internal)? {
                out.insert(l.name.clone(), l);
            }
        }
        return Ok(out);
    }
    Ok(cx.nl.links().await.map_err(internal)?.into_iter().map(|l| (l.name.clone(), l)).collect())
}

pub(crate) fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

pub(crate) fn internal<E: std::error::Error + 'static>(e: E) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

pub(crate) fn gone(e: crate::datapath::Gone) -> ApiError {
    ApiError::from_chain(ErrorKind::Internal, &e)
}

/// The kernel interface behind a port.
pub fn port_ifname(spec: &PortSpec) -> Option<IfName> {
    match &spec.kind {
        PortKind::Netdev { ifname, .. } => Some(ifname.clone()),
        PortKind::Internal { ifname } => Some(ifname.clone().unwrap_or_else(|| spec.name.clone())),
        PortKind::VhostUser { .. } | PortKind::Vxlan { .. } => None,
    }
}

/// What a port occupies that no other port may: its interface, or its socket.
pub fn port_resource(spec: &PortSpec) -> String {
    match (&spec.kind, port_ifname(spec)) {
        (PortKind::VhostUser { path, .. }, _) => format!("socket {}", path.display()),
        // A VNI on a UDP port is one tunnel's (a built-in tunnel's socket is checked when
        // it binds).
        (PortKind::Vxlan { vni, vni_map, local, dstport, .. }, _) => {
            let first = vni.or(vni_map.first().map(|m| m.vni)).unwrap_or(0);
            let at = local.map_or_else(|| "*".to_owned(), |a| a.to_string());
            format!("VXLAN VNI {first} on {at} port {dstport}")
        }
        (_, Some(i)) => i.to_string(),
        (_, None) => String::new(),
    }
}

/// `USER[:GROUP]` to uid and gid (the group defaults to the user's primary group).
pub fn resolve_owner(spec: &str) -> Result<(u32, u32), ApiError> {
    let invalid = |e: crate::users::Error| ApiError::from_chain(ErrorKind::InvalidArgument, &e);
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = crate::users::resolve_user(u).map_err(invalid)?;
    let gid = match g {
        Some(g) => crate::users::resolve_group(g).map_err(invalid)?.id,
        None => crate::users::primary_group(user.id).map_or(user.id, |p| p.id),
    };
    Ok((user.id, gid))
}

/// Whether `link` is the interface `decl` was declared on (ports bound to an identity, see
/// [`Attached`]); the status to show when it is not.
pub fn identity(decl: &PortDecl, link: &Link) -> Result<(), PortStatus> {
    match decl.attached {
        Some(Attached { ifindex }) if ifindex != link.index => Err(PortStatus::IdentityChanged {
            ifname: IfName::new(&link.name).unwrap_or_else(|_| decl.spec.name.clone()),
            ifindex: link.index,
            declared_ifindex: ifindex,
        }),
        _ => Ok(()),
    }
}

/// Refuses to attach a port to an interface other than the one it was declared on.
pub fn same_interface(decl: &PortDecl, link: &Link) -> Result<(), ApiError> {
    identity(decl, link).map_err(|st| {
        err(ErrorKind::Conflict, format!("{st}; port {} not attached (remove it if it is stale)", decl.spec.name))
    })
}

/// The identity a new netdev port is bound to: the interface's index, when it is a TAP
/// vmnetd does not declare (libvirt's `vnetN`, a TAP made by hand). NICs, veths and
/// vmnetd's own TAPs (re-made by vmnetd after a reboot) are followed by name.
pub async fn identity_of(cx: &Ctx, spec: &PortSpec) -> Result<Option<Attached>, ApiError> {
    let PortKind::Netdev { ifname, .. } = &spec.kind else { return Ok(None) };
    if cx.declares_tap(ifname) {
        return Ok(None);
    }
    Ok(match cx.nl.link(ifname).await.map_err(internal)? {
        Some(l) if l.is_tun() => Some(Attached { ifindex: l.index }),
        _ => None,
    })
}
