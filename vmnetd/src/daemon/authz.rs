//! Who may do what through the control socket.
//!
//! The socket is mode 0660, group `vmnetd` (`[daemon] socket_group`): root and members of
//! that group can connect, and the kernel tells us who connected (`SO_PEERCRED`).
//!
//! - **root** may do everything (the CLI run by an administrator, the libvirt hook).
//! - **a non-root member of the group** may:
//!   - read: `status`, `tap list`, `bridge list`, `port list`, `fdb show`, `stats`;
//!   - `mktap` a TAP owned by themselves (`--user` themselves or left out; `--group` one of
//!     their groups), and `rmtap` the TAPs declared with them as owner;
//!   - `port add` on any bridge and VLAN (the group is the right to put VMs on the host's
//!     VLANs, as libvirt's group is the right to run VMs), at most
//!     `[control] max_ports_per_user` of them: a netdev port only on a TAP declared in
//!     vmnetd with them as owner; a vhost-user port only with its socket in their own
//!     directory `RUN_DIR/users/UID/` (a plain name is put there), owned by themselves
//!     (server mode), or, in client mode, only to a frontend that runs as themselves
//!     (checked on every connection with `SO_PEERCRED`); no internal ports (they make host
//!     interfaces), no labels that claim a port for the libvirt hook (`created-by`);
//!   - `port del` and `capture` on the ports they added;
//!   - read networks: `network list`, `network show`, `network leases`.
//!
//!   Everything else (bridges, networks, leases, port forwards, internal ports, `fdb flush`, other users' TAPs and ports,
//!   ports declared by root or in the config file) is refused with `permission denied`.

use std::path::{Component, Path, PathBuf};

use crate::api::{ApiError, ErrorKind, Op, PortKind, PortSpec, TapSpec, VhostMode};

use super::core::Core;

/// A control-socket client, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    /// The daemon itself, or a root client.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0, pid: None };

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller is a member of group `gid` (primary or supplementary).
    fn in_group(&self, gid: u32) -> bool {
        if gid == self.gid {
            return true;
        }
        let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(self.uid)) else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name) else { return false };
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(self.gid))
            .is_ok_and(|gs| gs.iter().any(|g| g.as_raw() == gid))
    }
}

/// The label with which the libvirt hook marks what it creates (see `vmnetd-libvirt-hook`).
const HOOK_LABEL: &str = "created-by";

fn denied(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::PermissionDenied, msg)
}

/// Whether `path` is inside `dir`, lexically, with no `.`/`..` anywhere.
pub fn inside(path: &Path, dir: &Path) -> bool {
    path.components().all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
        && path.starts_with(dir)
        && path != dir
}

impl Core {
    /// Checks `op` against what `caller` may do, filling in what a non-root caller leaves
    /// out (the owner of a TAP or socket is the caller). Returns the request to run.
    pub(crate) fn authorize(&self, op: Op, caller: &Caller) -> Result<Op, ApiError> {
        if caller.is_root() {
            return Ok(op);
        }
        match op {
            Op::Status
            | Op::TapList
            | Op::BridgeList
            | Op::PortList(_)
            | Op::FdbShow(_)
            | Op::Stats(_)
            | Op::DatapathStats
            | Op::NetworkList
            | Op::NetworkShow(_)
            | Op::NetworkLeases(_)
            | Op::MirrorList(_)
            | Op::Capture(_) => Ok(op),
            Op::Mktap(spec) => Ok(Op::Mktap(self.own_tap(spec, caller)?)),
            Op::Rmtap(rm) => {
                let mine = self.state.tap(rm.name.as_str()).and_then(|t| t.owner.as_ref()).map(|o| o.id);
                if mine != Some(caller.uid) {
                    return Err(denied(format!("TAP {} is not yours (only its owner or root may remove it)", rm.name)));
                }
                Ok(Op::Rmtap(rm))
            }
            Op::PortAdd(spec) => {
                // Rules and mirrors follow ports by name: a name they use is root's to give
                // (else a user could add a port by that name and inherit a mirror's copies or
                // a rule's permissions).
                if self.policy_names_port(spec.bridge.as_str(), spec.name.as_str()) {
                    return Err(denied(format!(
                        "Port name {} is used by the flow rules or mirrors of bridge {}; only root may add it",
                        spec.name, spec.bridge
                    )));
                }
                Ok(Op::PortAdd(Box::new(self.own_port(*spec, caller)?)))
            }
            Op::PortDel(r) => {
                self.own_existing_port(r.bridge.as_str(), r.name.as_str(), caller)?;
                Ok(Op::PortDel(r))
            }
            other => Err(denied(format!("Only root may {}", op_name(&other)))),
        }
    }

    /// A port the caller added (for `port del` and `capture`).
    pub(crate) fn own_existing_port(&self, bridge: &str, name: &str, caller: &Caller) -> Result<(), ApiError> {
        if caller.is_root() {
            return Ok(());
        }
        let creator = self
            .state
            .ports
            .iter()
            .find(|p| p.spec.bridge.as_str() == bridge && p.spec.name.as_str() == name)
            .and_then(|p| p.creator);
        if creator != Some(caller.uid) {
            return Err(denied(format!("Port {name} of {bridge} was not added by you")));
        }
        Ok(())
    }

    fn own_tap(&self, mut spec: TapSpec, caller: &Caller) -> Result<TapSpec, ApiError> {
        if spec.external_ids.contains_key(HOOK_LABEL) {
            return Err(denied(format!("Only root may label a TAP {HOOK_LABEL}=... (the libvirt hook's TAPs)")));
        }
        let uid = match &spec.user {
            None => caller.uid,
            Some(u) => {
                crate::users::resolve_user(u).map_err(|e| ApiError::from_chain(ErrorKind::InvalidArgument, &e))?.id
            }
        };
        if uid != caller.uid {
            return Err(denied("A TAP you declare must be owned by you (--user is yours, or left out)"));
        }
        spec.user = Some(uid.to_string());
        if let Some(g) = &spec.group {
            let gid =
                crate::users::resolve_group(g).map_err(|e| ApiError::from_chain(ErrorKind::InvalidArgument, &e))?.id;
            if !caller.in_group(gid) {
                return Err(denied(format!("You are not a member of group {g}")));
            }
        }
        Ok(spec)
    }

    fn own_port(&self, mut spec: PortSpec, caller: &Caller) -> Result<PortSpec, ApiError> {
        if spec.external_ids.contains_key(HOOK_LABEL) {
            return Err(denied(format!("Only root may label a port {HOOK_LABEL}=... (the libvirt hook's ports)")));
        }
        if spec.external_ids.contains_key(crate::network::NETWORK_LABEL) {
            return Err(denied(format!(
                "Only root may label a port {}=... (a network's gateway port)",
                crate::network::NETWORK_LABEL
            )));
        }
        let mine = self.state.ports.iter().filter(|p| p.creator == Some(caller.uid)).count();
        if mine >= self.limits.max_ports_per_user {
            return Err(denied(format!(
                "You have {mine} ports already, the most a user may have ([control] max_ports_per_user)"
            )));
        }
        match &mut spec.kind {
            PortKind::Internal { .. } => {
                return Err(denied("Only root may add internal ports (they make host interfaces)"));
            }
            PortKind::Vxlan { .. } => {
                return Err(denied("Only root may add VXLAN tunnels (they exchange frames with other hosts)"));
            }
            PortKind::Netdev { ifname, .. } => {
                let owner = self
                    .config_taps
                    .iter()
                    .chain(&self.state.taps)
                    .find(|t| &t.name == ifname)
                    .and_then(|t| t.owner.as_ref())
                    .map(|o| o.id);
                if owner != Some(caller.uid) {
                    return Err(denied(format!(
                        "{ifname} is not a TAP declared in vmnetd with you as owner (vmnetd mktap --user you)"
                    )));
                }
            }
            PortKind::VhostUser { path, mode, owner, .. } => {
                // Their own directory: never the hook's RUN_DIR/libvirt/, nor a name another
                // user or root would use.
                let mine = self.paths.run_dir.join("users").join(caller.uid.to_string());
                let full: PathBuf = if path.is_relative() { mine.join(&*path) } else { path.clone() };
                if !inside(&full, &mine) || full.parent() != Some(mine.as_path()) {
                    return Err(denied(format!(
                        "Your vhost-user sockets must be in {}/ (give a plain name, not a path)",
                        mine.display()
                    )));
                }
                *path = full;
                if *mode == VhostMode::Server {
                    let (uid, gid) = match owner.as_deref() {
                        None => (caller.uid, caller.gid),
                        Some(o) => crate::bridge::resolve_owner(o)?,
                    };
                    if uid != caller.uid || !caller.in_group(gid) {
                        return Err(denied("The socket of your port must be owned by you (--owner you[:your group])"));
                    }
                    *owner = Some(format!("{uid}:{gid}"));
                }
            }
        }
        Ok(spec)
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::BridgeAdd(_) => "add bridges",
        Op::BridgeDel(_) => "remove bridges",
        Op::FdbFlush(_) => "flush forwarding tables",
        Op::NetworkAdd(_) => "add networks",
        Op::NetworkDel(_) => "remove networks",
        Op::LeaseAdd(_) | Op::LeaseDel(_) => "change static leases",
        Op::ForwardAdd(_) | Op::ForwardDel(_) => "change port forwards",
        Op::FlowAdd(_) | Op::FlowDel(_) | Op::FlowReplace(_) => "change flow rules",
        Op::FlowShow(_) | Op::Trace(_) => "read flow rules or trace (they run on the datapath thread)",
        Op::MirrorAdd(_) | Op::MirrorDel(_) => "change mirrors",
        Op::DebugPanic => "use test hooks",
        Op::ConfigDump(_) => "dump the running configuration",
        Op::Apply(_) => "apply a configuration",
        _ => "do that",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_a_directory() {
        let run = Path::new("/run/vmnetd");
        assert!(inside(Path::new("/run/vmnetd/vm1.sock"), run));
        assert!(inside(Path::new("/run/vmnetd/a/b.sock"), run));
        assert!(!inside(Path::new("/run/vmnetd"), run));
        assert!(!inside(Path::new("/run/vmnetd/../x.sock"), run));
        assert!(!inside(Path::new("/run/vmnetdx/a.sock"), run));
        assert!(!inside(Path::new("/tmp/a.sock"), run));
    }

    #[test]
    fn hook_label_is_the_hooks() {
        // The hook crate's name for it (kept in sync by hand: the hook does not depend on us).
        assert_eq!(HOOK_LABEL, "created-by");
    }
}
