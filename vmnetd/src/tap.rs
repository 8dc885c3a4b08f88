//! Persistent TAP/TUN devices as declarations: create, adopt, re-create, remove.
//!
//! The rules:
//! - A device vmnetd creates is marked with the interface alias [`MANAGED_ALIAS`], so even
//!   without the daemon's state (`vmnetd rmtap` with no daemon running) vmnetd can tell its
//!   own devices from someone else's, and deletes only its own unless forced.
//! - An existing device is adopted, never destroyed and re-made. It must be a TAP/TUN with the
//!   declared mode, multi-queue and vnet_hdr flags: attaching with other flags would change
//!   the device under whoever uses it, so those are compared (via netlink) before any change.
//! - Every check happens before the first change; a failure after creation undoes it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::api::{ErrorKind, TapInfo, TapSpec};
use crate::ifname::IfName;
use crate::netlink::{self, Link, LinkChange, Netlink};
use crate::switch::MacAddr;
use crate::sys::{self, tap as systap};
use crate::users::{self, Principal};

/// Interface alias that marks a device as created by vmnetd (`ip link show` prints it).
pub const MANAGED_ALIAS: &str = "vmnetd";

/// Prefix of automatically chosen names (`vmtap0`, `vmtap1`, ...), as `tunctl` uses `tapN`.
pub const AUTO_PREFIX: &str = "vmtap";

/// MTU bounds of a TAP device (`ip -d link` shows `minmtu 68 maxmtu 65521`).
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65521;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Creating or changing TAP devices needs CAP_NET_ADMIN; run vmnetd as root")]
    NoCapability,
    #[error("{0} exists and is a {1} device, not a TAP/TUN")]
    NotTun(IfName, String),
    #[error("{name} exists with different flags ({diffs}); vmnetd will not change a device in place")]
    FlagMismatch { name: IfName, diffs: String },
    #[error("{0} exists but is not persistent (a running process owns it); vmnetd will not take it over")]
    NotPersistent(IfName),
    #[error("{name} exists with different settings ({diffs}); declare it as it is, or remove it first")]
    SettingsMismatch { name: IfName, diffs: String },
    #[error("{0} was not created by vmnetd; add --force to delete it anyway")]
    NotOurs(IfName),
    #[error(
        "{name} is in use ({queues} queue(s) attached by a running process, e.g. QEMU); stop it first or add --force"
    )]
    InUse { name: IfName, queues: u32 },
    #[error("No TAP named {0}")]
    NoSuchTap(IfName),
    #[error("MTU {0} is outside the range a TAP accepts ({MIN_MTU}-{MAX_MTU})")]
    BadMtu(u32),
    #[error("MAC {0} is not a unicast address")]
    BadMac(MacAddr),
    #[error("{0}")]
    BadExternalIds(String),
    #[error("No free {AUTO_PREFIX}N name left")]
    NoFreeName,
    #[error("Cannot create TAP {0}")]
    Create(IfName, #[source] systap::Error),
    #[error("Cannot configure TAP {0}")]
    Configure(IfName, #[source] systap::Error),
    #[error("Cannot delete TAP {0}")]
    Delete(IfName, #[source] netlink::Error),
    #[error(transparent)]
    Users(#[from] users::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoCapability => ErrorKind::PermissionDenied,
            Error::NotTun(..)
            | Error::FlagMismatch { .. }
            | Error::NotPersistent(_)
            | Error::SettingsMismatch { .. }
            | Error::NotOurs(_)
            | Error::InUse { .. } => ErrorKind::Conflict,
            Error::NoSuchTap(_) => ErrorKind::NotFound,
            Error::BadMtu(_) | Error::BadMac(_) | Error::BadExternalIds(_) | Error::Users(_) => {
                ErrorKind::InvalidArgument
            }
            Error::Create(_, e) | Error::Configure(_, e) if e.raw_os_error() == Some(libc::EPERM) => {
                ErrorKind::PermissionDenied
            }
            Error::NoFreeName | Error::Create(..) | Error::Configure(..) | Error::Delete(..) | Error::Netlink(_) => {
                ErrorKind::Internal
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A TAP declaration with its owner resolved to numeric ids: what is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapDecl {
    pub name: IfName,
    #[serde(default)]
    pub mode: systap::Mode,
    #[serde(default)]
    pub owner: Option<Principal>,
    #[serde(default)]
    pub group: Option<Principal>,
    #[serde(default)]
    pub multi_queue: bool,
    #[serde(default)]
    pub vnet_hdr: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// vmnetd created the device (rather than adopting it), so may delete it.
    #[serde(default)]
    pub created: bool,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub external_ids: crate::api::ExternalIds,
}

impl TapDecl {
    /// Validates a client's spec and resolves its user and group.
    pub fn from_spec(spec: &TapSpec, name: IfName) -> Result<TapDecl> {
        if let Some(m) = spec.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return Err(Error::BadMtu(m));
            }
        }
        if let Some(mac) = spec.mac {
            if !mac.is_unicast() {
                return Err(Error::BadMac(mac));
            }
        }
        crate::api::validate_external_ids(&spec.external_ids).map_err(|e| Error::BadExternalIds(e.message))?;
        let owner = spec.user.as_deref().map(users::resolve_user).transpose()?;
        let group = spec.group.as_deref().map(users::resolve_group).transpose()?;
        Ok(TapDecl {
            name,
            mode: spec.mode,
            owner,
            group,
            multi_queue: spec.multi_queue,
            vnet_hdr: spec.vnet_hdr,
            mtu: spec.mtu,
            mac: spec.mac,
            created: false,
            external_ids: spec.external_ids.clone(),
        })
    }

    pub fn open_flags(&self) -> systap::OpenFlags {
        systap::OpenFlags { mode: self.mode, multi_queue: self.multi_queue, vnet_hdr: self.vnet_hdr }
    }

    pub fn info(&self, link: Option<&Link>, source: crate::api::Source) -> TapInfo {
        TapInfo {
            name: self.name.clone(),
            mode: self.mode,
            owner: self.owner.clone(),
            group: self.group.clone(),
            multi_queue: self.multi_queue,
            vnet_hdr: self.vnet_hdr,
            mtu: link.and_then(|l| l.mtu).or(self.mtu),
            mac: link.and_then(|l| l.mac).or(self.mac),
            created: self.created,
            source,
            present: link.is_some(),
            queues_attached: link.map_or(0, Link::tap_queues_attached),
            external_ids: self.external_ids.clone(),
        }
    }
}

/// How strictly [`ensure`] treats an existing device whose owner, group, MTU or MAC differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A new declaration: refuse a device that differs (the user may not know it exists).
    Declare,
    /// Re-applying a recorded declaration at start: the declaration wins, re-apply it.
    Restore,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// An existing device matched (or, under [`Policy::Restore`], was brought back in line).
    Adopted,
}

fn flag_diffs(decl: &TapDecl, link: &Link) -> Option<Vec<String>> {
    let tun = link.tun.as_ref()?;
    let mut d = Vec::new();
    let on = |b: bool| if b { "on" } else { "off" };
    if let Some(m) = tun.mode {
        if m != decl.mode {
            d.push(format!("mode {m}, declared {}", decl.mode));
        }
    }
    if tun.multi_queue != decl.multi_queue {
        d.push(format!("multi_queue {}, declared {}", on(tun.multi_queue), on(decl.multi_queue)));
    }
    if tun.vnet_hdr != decl.vnet_hdr {
        d.push(format!("vnet_hdr {}, declared {}", on(tun.vnet_hdr), on(decl.vnet_hdr)));
    }
    if tun.pi {
        d.push("pi on (packet information header), vmnetd uses pi off".to_owned());
    }
    Some(d)
}

fn setting_diffs(decl: &TapDecl, link: &Link) -> Vec<String> {
    let tun = link.tun.clone().unwrap_or_default();
    let mut d = Vec::new();
    let show = |p: Option<u32>| p.map_or("none".to_owned(), |v| v.to_string());
    let want_owner = decl.owner.as_ref().map(|p| p.id);
    if want_owner.is_some() && tun.owner != want_owner {
        d.push(format!("owner {}, declared {}", show(tun.owner), show(want_owner)));
    }
    let want_group = decl.group.as_ref().map(|p| p.id);
    if want_group.is_some() && tun.group != want_group {
        d.push(format!("group {}, declared {}", show(tun.group), show(want_group)));
    }
    if decl.mtu.is_some() && link.mtu != decl.mtu {
        d.push(format!("mtu {}, declared {}", show(link.mtu), show(decl.mtu)));
    }
    if let Some(mac) = decl.mac {
        if link.mac != Some(mac) {
            d.push(format!("mac {}, declared {mac}", link.mac.map_or("none".to_owned(), |m| m.to_string())));
        }
    }
    d
}

fn require_cap() -> Result<()> {
    match sys::has_cap_net_admin() {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::NoCapability),
        // Cannot tell: let the kernel decide and report its own error.
        Err(_) => Ok(()),
    }
}

/// Makes the declared device exist as declared. Returns whether it was created or adopted;
/// on success under [`Outcome::Created`], `decl.created` should be recorded as true.
pub async fn ensure(nl: &Netlink, decl: &TapDecl, policy: Policy) -> Result<Outcome> {
    match nl.link(&decl.name).await? {
        None => {
            require_cap()?;
            create(nl, decl).await?;
            Ok(Outcome::Created)
        }
        Some(link) => {
            adopt(nl, decl, &link, policy).await?;
            Ok(Outcome::Adopted)
        }
    }
}

async fn create(nl: &Netlink, decl: &TapDecl) -> Result<()> {
    let name = &decl.name;
    // IFF_TUN_EXCL: if someone creates the name between our check and now, fail rather than
    // attach to their device.
    let tap = systap::Tap::open(Some(name), decl.open_flags(), true).map_err(|e| Error::Create(name.clone(), e))?;
    let configure = async {
        if let Some(o) = &decl.owner {
            tap.set_owner(o.id).map_err(|e| Error::Configure(name.clone(), e))?;
        }
        if let Some(g) = &decl.group {
            tap.set_group(g.id).map_err(|e| Error::Configure(name.clone(), e))?;
        }
        let link = nl.link(name).await?.ok_or_else(|| Error::NoSuchTap(name.clone()))?;
        nl.set_link(
            link.index,
            &LinkChange { mtu: decl.mtu, mac: decl.mac, alias: Some(MANAGED_ALIAS.to_owned()), up: None },
        )
        .await?;
        nl.set_link(link.index, &LinkChange { up: Some(true), ..Default::default() }).await?;
        tap.set_persist(true).map_err(|e| Error::Configure(name.clone(), e))
    };
    // Until TUNSETPERSIST succeeds the device lives only as long as `tap`: on any error,
    // dropping `tap` removes it, so nothing half-made is left behind.
    configure.await
}

async fn adopt(nl: &Netlink, decl: &TapDecl, link: &Link, policy: Policy) -> Result<()> {
    let name = &decl.name;
    if !link.is_tun() {
        let kind = link.kind.clone().unwrap_or_else(|| "physical or unknown".to_owned());
        return Err(Error::NotTun(name.clone(), kind));
    }
    if let Some(diffs) = flag_diffs(decl, link) {
        if !diffs.is_empty() {
            return Err(Error::FlagMismatch { name: name.clone(), diffs: diffs.join(", ") });
        }
    }
    let tun = link.tun.clone().unwrap_or_default();
    if !tun.persist {
        return Err(Error::NotPersistent(name.clone()));
    }
    let diffs = setting_diffs(decl, link);
    if diffs.is_empty() {
        if !link.up {
            require_cap()?;
            nl.set_link(link.index, &LinkChange { up: Some(true), ..Default::default() }).await?;
        }
        return Ok(());
    }
    if policy == Policy::Declare {
        return Err(Error::SettingsMismatch { name: name.clone(), diffs: diffs.join(", ") });
    }
    // Restore: bring the device back in line with its declaration.
    require_cap()?;
    let want_owner = decl.owner.as_ref().map(|p| p.id);
    let want_group = decl.group.as_ref().map(|p| p.id);
    if (want_owner.is_some() && tun.owner != want_owner) || (want_group.is_some() && tun.group != want_group) {
        // Same flags as the device has (checked above), so attaching changes nothing else.
        let tap =
            systap::Tap::open(Some(name), decl.open_flags(), false).map_err(|e| Error::Configure(name.clone(), e))?;
        if let Some(uid) = want_owner {
            tap.set_owner(uid).map_err(|e| Error::Configure(name.clone(), e))?;
        }
        if let Some(gid) = want_group {
            tap.set_group(gid).map_err(|e| Error::Configure(name.clone(), e))?;
        }
    }
    nl.set_link(
        link.index,
        &LinkChange {
            mtu: decl.mtu.filter(|m| link.mtu != Some(*m)),
            mac: decl.mac.filter(|m| link.mac != Some(*m)),
            up: Some(true),
            alias: None,
        },
    )
    .await?;
    log::info!("re-applied declaration of {name} ({})", diffs.join(", "));
    Ok(())
}

/// Whether vmnetd may delete `link` without `--force`: recorded as created by vmnetd, or (with
/// no record available) marked with [`MANAGED_ALIAS`].
pub fn is_ours(decl: Option<&TapDecl>, link: &Link) -> bool {
    match decl {
        Some(d) => d.created,
        None => link.alias.as_deref() == Some(MANAGED_ALIAS),
    }
}

/// Deletes the TAP `name`. Refuses (unless `force`) a device vmnetd did not create or one a
/// process still has open. `Ok(false)`: the device was already gone.
pub async fn remove(nl: &Netlink, name: &IfName, decl: Option<&TapDecl>, force: bool) -> Result<bool> {
    let Some(link) = nl.link(name).await? else {
        return Ok(false);
    };
    if !link.is_tun() {
        let kind = link.kind.clone().unwrap_or_else(|| "physical or unknown".to_owned());
        return Err(Error::NotTun(name.clone(), kind));
    }
    if !force {
        if !is_ours(decl, &link) {
            return Err(Error::NotOurs(name.clone()));
        }
        let queues = link.tap_queues_attached();
        if queues > 0 {
            return Err(Error::InUse { name: name.clone(), queues });
        }
    }
    require_cap()?;
    nl.delete_link(link.index).await.map_err(|e| Error::Delete(name.clone(), e))?;
    Ok(true)
}

/// The first `vmtapN` that is neither a link nor in `taken`.
pub async fn pick_free_name(nl: &Netlink, taken: &HashSet<String>) -> Result<IfName> {
    let existing: HashSet<String> = nl.links().await?.into_iter().map(|l| l.name).collect();
    (0..100_000u32)
        .map(|n| format!("{AUTO_PREFIX}{n}"))
        .find(|n| !existing.contains(n) && !taken.contains(n))
        .and_then(|n| IfName::new(&n).ok())
        .ok_or(Error::NoFreeName)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::TunInfo;

    fn link(tun: TunInfo) -> Link {
        Link {
            index: 7,
            name: "tap0".into(),
            kind: Some("tun".into()),
            tun: Some(tun),
            mtu: Some(1500),
            mac: Some("52:54:00:00:00:01".parse().unwrap()),
            alias: None,
            up: true,
            oper_up: false,
            carrier: false,
            controller: None,
        }
    }

    fn decl() -> TapDecl {
        TapDecl::from_spec(&TapSpec::default(), IfName::new("tap0").unwrap()).unwrap()
    }

    #[test]
    fn flag_mismatch_is_reported_per_flag() {
        let mut d = decl();
        d.vnet_hdr = true;
        let l = link(TunInfo { mode: Some(systap::Mode::Tap), multi_queue: true, persist: true, ..Default::default() });
        let diffs = flag_diffs(&d, &l).unwrap();
        assert_eq!(diffs, vec!["multi_queue on, declared off", "vnet_hdr off, declared on"]);
    }

    #[test]
    fn settings_only_compare_what_is_declared() {
        let mut d = decl();
        let l = link(TunInfo { owner: Some(1000), ..Default::default() });
        assert!(setting_diffs(&d, &l).is_empty(), "undeclared owner must not count");
        d.owner = Some(Principal { id: 1001, name: None });
        d.mtu = Some(9000);
        assert_eq!(setting_diffs(&d, &l), vec!["owner 1000, declared 1001", "mtu 1500, declared 9000"]);
    }

    #[test]
    fn spec_validation() {
        let name = IfName::new("t").unwrap();
        let bad_mtu = TapSpec { mtu: Some(67), ..Default::default() };
        assert!(matches!(TapDecl::from_spec(&bad_mtu, name.clone()), Err(Error::BadMtu(67))));
        let bad_mac = TapSpec { mac: Some(MacAddr::BROADCAST), ..Default::default() };
        assert!(matches!(TapDecl::from_spec(&bad_mac, name.clone()), Err(Error::BadMac(_))));
        let bad_user = TapSpec { user: Some("no-such-user-vmnetd".into()), ..Default::default() };
        let e = TapDecl::from_spec(&bad_user, name).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.to_string(), "Unknown user \"no-such-user-vmnetd\": neither a user name nor a numeric uid");
    }

    #[test]
    fn ownership_marker() {
        let mut l = link(TunInfo::default());
        assert!(!is_ours(None, &l));
        l.alias = Some(MANAGED_ALIAS.into());
        assert!(is_ours(None, &l));
        let mut d = decl();
        assert!(!is_ours(Some(&d), &l), "the record wins over the alias");
        d.created = true;
        assert!(is_ours(Some(&d), &l));
    }
}
