//! The Linux bridge: a kernel bridge, created or adopted over rtnetlink ([`crate::linuxbr`]
//! builds the messages). A port is an interface enslaved to it, with its VLANs (bridge VLAN
//! filtering, switched on when a port first needs one).

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::api::{ApiError, BridgeSpec, ErrorKind, FdbRow, PortKind, PortSpec, PortStatus};
use crate::datapath::capture::Sink;
use crate::ifname::IfName;
use crate::linuxbr;
use crate::state::{BridgeDecl, PortDecl};
use crate::switch::{VlanId, VlanMode};
use crate::tap::Policy;

use super::{err, identity, internal, port_ifname, same_interface, BridgeBackend, Ctx, PortView};

#[derive(Debug, Default)]
pub struct Linux;

fn lb_err(e: linuxbr::Error) -> ApiError {
    ApiError::from_chain(e.kind(), &e)
}

fn builtin_only(bridge: &IfName) -> ApiError {
    err(ErrorKind::Unsupported, format!("{bridge} is a Linux bridge; see `bridge fdb show br {bridge}`"))
}

impl BridgeBackend for Linux {
    fn create<'a>(&'a self, cx: &'a Ctx, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<bool, ApiError>> {
        async move {
            let (_, created) = linuxbr::create_or_adopt(&cx.nl, spec).await.map_err(lb_err)?;
            Ok(created)
        }
        .boxed()
    }

    fn destroy<'a>(&'a self, cx: &'a Ctx, decl: &'a BridgeDecl) -> BoxFuture<'a, ()> {
        async move {
            let name = &decl.spec.name;
            if !decl.created {
                log::info!("bridge {name}: adopted, so left in place");
                return;
            }
            if let Ok(Some(l)) = cx.nl.link(name).await {
                if let Err(e) = cx.nl.delete_link(l.index).await {
                    log::warn!("bridge {name}: cannot delete it: {}", crate::api::error_chain(&e));
                }
            }
        }
        .boxed()
    }

    fn check_port(&self, spec: &PortSpec) -> Result<(), ApiError> {
        if spec.ingress_rate_kbit.is_some() || spec.egress_rate_kbit.is_some() {
            return Err(err(
                ErrorKind::Unsupported,
                "Policing is a built-in bridge feature (on a Linux bridge, use tc on the port)",
            ));
        }
        match &spec.kind {
            PortKind::Netdev { io, .. } if !io.is_auto() => Err(err(
                ErrorKind::Unsupported,
                format!(
                    "--io {} chooses how a built-in bridge moves a port's frames; a Linux bridge's ports never leave the kernel",
                    io.name()
                ),
            )),
            PortKind::Netdev { .. } => Ok(()),
            PortKind::Internal { .. } => Err(err(
                ErrorKind::Unsupported,
                "Internal ports belong to built-in bridges; on a Linux bridge, give the bridge itself an address",
            )),
            PortKind::VhostUser { .. } => Err(err(
                ErrorKind::Unsupported,
                "vhost-user ports need a built-in bridge (the kernel bridge has no vhost-user backend here)",
            )),
            PortKind::Vxlan { vni_map, .. } if !vni_map.is_empty() => Err(err(
                ErrorKind::Unsupported,
                "--vni-map needs a built-in bridge (a Linux bridge would need VLAN filtering and per-VLAN tunnel \
                 mapping); on a Linux bridge add one tunnel port per VNI",
            )),
            PortKind::Vxlan { .. } => Ok(()),
        }
    }

    /// Enslaves a netdev to the bridge with its VLANs. When the port needs VLANs and the
    /// kernel cannot filter them, refuses before changing anything; a VLAN step that fails
    /// after enslaving releases the port again.
    fn attach<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl, policy: Policy) -> BoxFuture<'a, Result<bool, ApiError>> {
        async move {
            let spec = &decl.spec;
            self.check_port(spec)?;
            let ifname = kernel_ifname(spec);
            let nl = &cx.nl;
            let br = nl
                .link(&spec.bridge)
                .await
                .map_err(internal)?
                .ok_or_else(|| err(ErrorKind::NotFound, format!("Linux bridge {} does not exist", spec.bridge)))?;
            let made = match &spec.kind {
                PortKind::Vxlan { .. } => ensure_vxlan(cx, decl, policy).await?,
                _ => false,
            };
            match enslave_port(cx, decl, &br, &ifname).await {
                Ok(()) => Ok(made),
                Err(e) => {
                    if made {
                        if let Ok(Some(l)) = nl.link(&ifname).await {
                            let _ = nl.delete_link(l.index).await;
                        }
                    }
                    Err(e)
                }
            }
        }
        .boxed()
    }

    /// Releases the port (`ip link set PORT nomaster`), if it is enslaved to the bridge.
    fn detach<'a>(&'a self, cx: &'a Ctx, decl: &'a PortDecl) -> BoxFuture<'a, ()> {
        async move {
            let spec = &decl.spec;
            let ifname = kernel_ifname(spec);
            if matches!(spec.kind, PortKind::Vxlan { .. }) {
                // The device vmnetd made for the tunnel goes with the port.
                if let Ok(Some(link)) = cx.nl.link(&ifname).await {
                    if decl.created && link.kind.as_deref() == Some("vxlan") {
                        if let Err(e) = cx.nl.delete_link(link.index).await {
                            log::warn!("port {}: {}", spec.name, crate::api::error_chain(&e));
                        }
                    }
                }
                return;
            }
            if let (Ok(Some(br)), Ok(Some(link))) = (cx.nl.link(&spec.bridge).await, cx.nl.link(&ifname).await) {
                if link.controller == Some(br.index) && identity(decl, &link).is_ok() {
                    if let Err(e) = linuxbr::release(&cx.nl, link.index).await {
                        log::warn!("port {}: {}", spec.name, crate::api::error_chain(&e));
                    }
                }
            }
        }
        .boxed()
    }

    /// Ports as the kernel has them: one link dump, one bridge-VLAN dump, and per bridge
    /// one filtering query, whatever the number of ports.
    fn views<'a>(&'a self, cx: &'a Ctx, decls: &'a [PortDecl]) -> BoxFuture<'a, Result<Vec<PortView>, ApiError>> {
        async move {
            if decls.is_empty() {
                return Ok(Vec::new());
            }
            let mut names: Vec<IfName> = decls.iter().map(|d| kernel_ifname(&d.spec)).collect();
            for d in decls {
                if !names.contains(&d.spec.bridge) {
                    names.push(d.spec.bridge.clone());
                }
            }
            let links = super::links_named(cx, &names).await?;
            let by_name: HashMap<&str, &crate::netlink::Link> = links.iter().map(|(n, l)| (n.as_str(), l)).collect();
            let mut filtering: HashMap<u32, bool> = HashMap::new();
            let mut vlans: Option<HashMap<u32, Vec<crate::api::KernelVlan>>> = None;
            let mut out = Vec::with_capacity(decls.len());
            for decl in decls {
                let spec = &decl.spec;
                let ifname = kernel_ifname(spec);
                let Some(br) = by_name.get(spec.bridge.as_str()) else {
                    out.push(PortView::of(PortStatus::Missing {
                        reason: format!("Linux bridge {} does not exist", spec.bridge),
                    }));
                    continue;
                };
                let Some(link) = by_name.get(ifname.as_str()) else {
                    out.push(PortView::of(PortStatus::Missing { reason: format!("no interface {ifname}") }));
                    continue;
                };
                if let Err(moved) = identity(decl, link) {
                    out.push(PortView::of(moved));
                    continue;
                }
                if link.controller != Some(br.index) {
                    out.push(PortView::of(PortStatus::Detached {
                        reason: format!("{ifname} is not a port of {}", spec.bridge),
                    }));
                    continue;
                }
                let on = match filtering.get(&br.index) {
                    Some(on) => *on,
                    None => {
                        let on = linuxbr::filtering_enabled(&cx.nl, br.index).await.unwrap_or(false);
                        filtering.insert(br.index, on);
                        on
                    }
                };
                if !on {
                    out.push(PortView::of(PortStatus::Up { queue_pairs: None }));
                    continue;
                }
                if vlans.is_none() {
                    vlans = Some(linuxbr::all_port_vlans(&cx.nl).await.unwrap_or_default());
                }
                let have = vlans.as_ref().and_then(|v| v.get(&link.index)).cloned().unwrap_or_default();
                let drift = have != linuxbr::desired_vlans(&spec.vlan);
                let status = if drift { PortStatus::VlanDrift } else { PortStatus::Up { queue_pairs: None } };
                out.push(PortView { kernel_vlans: Some(have), ..PortView::of(status) });
            }
            Ok(out)
        }
        .boxed()
    }

    fn fdb<'a>(
        &'a self,
        _cx: &'a Ctx,
        bridge: &'a IfName,
        _vlan: Option<VlanId>,
    ) -> BoxFuture<'a, Result<Vec<FdbRow>, ApiError>> {
        async move { Err(builtin_only(bridge)) }.boxed()
    }

    fn fdb_entries<'a>(&'a self, _cx: &'a Ctx, _bridge: &'a IfName) -> BoxFuture<'a, Result<usize, ApiError>> {
        async move { Ok(0) }.boxed()
    }

    fn flush_fdb<'a>(&'a self, _cx: &'a Ctx, bridge: &'a IfName) -> BoxFuture<'a, Result<usize, ApiError>> {
        async move { Err(builtin_only(bridge)) }.boxed()
    }

    fn capture<'a>(&'a self, _cx: &'a Ctx, decl: &'a PortDecl, _sink: Sink) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            Err(err(
                ErrorKind::Unsupported,
                format!(
                    "{} is a Linux bridge; capture on its port's interface (tcpdump -i {})",
                    decl.spec.bridge,
                    kernel_ifname(&decl.spec)
                ),
            ))
        }
        .boxed()
    }

    fn needs_repair(&self, status: &PortStatus) -> bool {
        matches!(status, PortStatus::Detached { .. } | PortStatus::VlanDrift)
    }
}

/// The kernel interface of a port of a Linux bridge: a netdev's, or the vxlan device a
/// tunnel port makes (named as the port).
fn kernel_ifname(spec: &PortSpec) -> IfName {
    port_ifname(spec).unwrap_or_else(|| spec.name.clone())
}

/// Enslaves a port's interface to the bridge with its VLANs and isolation. A VLAN or
/// isolation step that fails after enslaving releases the port again.
async fn enslave_port(cx: &Ctx, decl: &PortDecl, br: &crate::netlink::Link, ifname: &IfName) -> Result<(), ApiError> {
    let spec = &decl.spec;
    let nl = &cx.nl;
    let ifname = ifname.clone();
    let link = nl
        .link(&ifname)
        .await
        .map_err(internal)?
        .ok_or_else(|| err(ErrorKind::NotFound, format!("No interface {ifname}")))?;
    if link.name == "lo" || link.index == br.index {
        return Err(err(ErrorKind::InvalidArgument, format!("{ifname} cannot be a port of {}", spec.bridge)));
    }
    same_interface(decl, &link)?;
    let enslaved = link.controller == Some(br.index);
    if let (false, Some(c)) = (enslaved, link.controller) {
        let owner = nl.link_by_index(c).await.ok().flatten().map_or(c.to_string(), |l| l.name);
        return Err(lb_err(linuxbr::Error::EnslavedElsewhere { port: ifname.clone(), owner }));
    }
    let filtering = linuxbr::filtering_enabled(nl, br.index).await.map_err(lb_err)?;
    let needs_vlans = spec.vlan != VlanMode::default();
    if needs_vlans {
        linuxbr::ensure_filtering(nl, br, &ifname, &spec.vlan).await.map_err(lb_err)?;
    }
    if !enslaved {
        linuxbr::enslave(nl, &link, br.index).await.map_err(lb_err)?;
    }
    if needs_vlans || filtering {
        if let Err(e) = linuxbr::apply_vlans(nl, &ifname, link.index, &spec.vlan).await {
            if !enslaved {
                let _ = linuxbr::release(nl, link.index).await;
            }
            return Err(lb_err(e));
        }
    }
    // The kernel bridge's own port isolation (a released port loses it with its
    // bridge-port state, so only `on` is ever set).
    if spec.isolated {
        if let Err(e) = linuxbr::set_isolated(nl, link.index, true).await {
            if !enslaved {
                let _ = linuxbr::release(nl, link.index).await;
            }
            return Err(lb_err(e));
        }
    }
    Ok(())
}

/// Makes a tunnel port's kernel vxlan device, or takes the one it made before (a restart).
/// Returns whether it was made now. A device of that name vmnetd did not make is refused.
async fn ensure_vxlan(cx: &Ctx, decl: &PortDecl, policy: Policy) -> Result<bool, ApiError> {
    let spec = &decl.spec;
    let PortKind::Vxlan { vni, local, remotes, group, dev, dstport, .. } = &spec.kind else {
        return Ok(false);
    };
    let Some(vni) = vni else {
        return Err(err(ErrorKind::InvalidArgument, "A tunnel port on a Linux bridge needs --vni"));
    };
    if let Some(l) = cx.nl.link(&spec.name).await.map_err(internal)? {
        if l.kind.as_deref() == Some("vxlan") && (policy == Policy::Restore || decl.created) {
            return Ok(false);
        }
        return Err(err(
            ErrorKind::Conflict,
            format!(
                "{} exists already (a {} device); a tunnel port makes its own device, named as the port",
                spec.name,
                l.kind.as_deref().unwrap_or("kernel")
            ),
        ));
    }
    let dev_index = match dev {
        Some(d) => Some(
            cx.nl
                .link(d)
                .await
                .map_err(internal)?
                .ok_or_else(|| err(ErrorKind::NotFound, format!("No interface {d}")))?
                .index,
        ),
        None => None,
    };
    let d = linuxbr::VxlanDev {
        name: &spec.name,
        vni: *vni,
        local: *local,
        remotes,
        group: *group,
        dev: dev_index,
        dstport: *dstport,
    };
    linuxbr::create_vxlan(&cx.nl, &d).await.map_err(lb_err)?;
    Ok(true)
}
