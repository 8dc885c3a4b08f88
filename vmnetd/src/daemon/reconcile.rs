//! The reconciler: puts ports back when their interface returns, driven by events.
//!
//! What wakes it:
//! - rtnetlink link notifications (`RTNLGRP_LINK`: an interface appeared, changed, went; a
//!   Linux bridge port was released or its VLANs changed), by interface name;
//! - the datapath, when a built-in bridge port's edge fails (its interface was deleted);
//! - a slow sweep of every port (every [`SWEEP`]), in case a notification was lost (the
//!   kernel drops them when the socket's buffer overflows).
//!
//! Per wake-up it costs O(ports concerned), not O(ports): under the daemon's lock it only
//! picks the declarations those names concern (no I/O); then, without the lock, it asks their
//! backends for their status and repairs those that need it (netlink calls, datapath calls);
//! then, under the lock again, it records what changed — and takes back a repair whose port
//! was removed meanwhile.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, Mutex};

use crate::bridge::{port_ifname, Ctx};
use crate::state::PortDecl;
use crate::tap::Policy;

use super::core::Core;

/// How often every port is looked at anyway.
pub const SWEEP: Duration = Duration::from_secs(30);
/// Events that come together (a link going down and up) are handled together.
const SETTLE: Duration = Duration::from_millis(50);

/// Something the reconciler should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An interface of this name appeared, changed or went.
    Link(String),
    /// A built-in bridge port's edge failed: (bridge, port).
    PortDown(String, String),
    /// Look at every port.
    Sweep,
}

/// What the reconciler did in one round (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Ports whose status was looked at.
    pub examined: usize,
    /// Ports repaired: (bridge, port).
    pub repaired: Vec<(String, String)>,
}

/// Listens for rtnetlink link notifications and forwards the interface names.
pub fn watch_links(tx: mpsc::UnboundedSender<Event>) -> std::io::Result<()> {
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_sys::{AsyncSocket, SocketAddr};

    const RTMGRP_LINK: u32 = 1;
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let link = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)) => l,
                _ => continue,
            };
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(n) = name {
                if tx.send(Event::Link(n)).is_err() {
                    return;
                }
            }
        }
        log::warn!("reconciler: the link notification stream ended; only the periodic sweep is left");
    });
    Ok(())
}

/// Runs the reconciler until the channel closes.
pub async fn run(core: Arc<Mutex<Core>>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await; // the first tick is immediate; start-up attached everything already
    loop {
        let first = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            _ = sweep.tick() => Event::Sweep,
        };
        let mut batch = vec![first];
        // Whatever else comes right after belongs to the same change.
        tokio::time::sleep(SETTLE).await;
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
        }
        let r = round(&core, &batch).await;
        for (b, p) in &r.repaired {
            tracing::info!(bridge = %b, port = %p, "port {p} of {b}: re-attached");
        }
    }
}

/// One round: the declarations `events` concern, their status, their repairs.
pub async fn round(core: &Mutex<Core>, events: &[Event]) -> Round {
    // 1. Under the lock, no I/O: which declarations, and the handles to work with.
    let (cx, mut candidates) = {
        let c = core.lock().await;
        (c.ctx(), concerned(&c, events))
    };
    candidates.sort_by(|a, b| a.spec.bridge.cmp(&b.spec.bridge));
    let mut round = Round { examined: candidates.len(), ..Default::default() };
    // 2. Without the lock: status (one pass per bridge), then the repairs.
    let mut results: Vec<(PortDecl, bool)> = Vec::new();
    for group in candidates.chunk_by(|a, b| a.spec.bridge == b.spec.bridge) {
        let Ok(backend) = core.lock().await.backend(&group[0].spec.bridge) else { continue };
        let views = match backend.views(&cx, group).await {
            Ok(v) => v,
            Err(e) => {
                log::debug!("reconciler: {}", e.message);
                continue;
            }
        };
        for (decl, view) in group.iter().zip(views) {
            if !backend.needs_repair(&view.status) {
                continue;
            }
            // A netdev port waits for its interface; it is never created.
            if matches!(view.status, crate::api::PortStatus::Missing { .. })
                && matches!(decl.spec.kind, crate::api::PortKind::Netdev { .. })
                && !interface_exists(&cx, decl).await
            {
                continue;
            }
            match backend.attach(&cx, decl, Policy::Restore).await {
                Ok(made) => results.push((decl.clone(), made)),
                Err(e) => log::debug!("port {} of {}: {}", decl.spec.name, decl.spec.bridge, e.message),
            }
        }
    }
    // 3. Under the lock: record, or take back what was removed meanwhile.
    let mut c = core.lock().await;
    let mut changed = false;
    for (decl, made) in results {
        let still =
            c.port_decl(decl.spec.bridge.as_str(), decl.spec.name.as_str()).is_some_and(|(d, _)| d.spec == decl.spec);
        if !still {
            if let Ok(backend) = c.backend(&decl.spec.bridge) {
                backend.detach(&cx, &decl).await;
            }
            continue;
        }
        if made && !decl.created {
            c.mark_port_created(&decl.spec);
            changed = true;
        }
        round.repaired.push((decl.spec.bridge.to_string(), decl.spec.name.to_string()));
    }
    if changed {
        if let Err(e) = c.store.save(&c.state) {
            log::error!("{}", crate::api::error_chain(&e));
        }
    }
    round
}

/// The declarations `events` concern.
fn concerned(c: &Core, events: &[Event]) -> Vec<PortDecl> {
    if events.contains(&Event::Sweep) {
        return c.port_decls().map(|(p, _)| p.clone()).collect();
    }
    let names: HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Link(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let down: HashSet<(&str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            Event::PortDown(b, p) => Some((b.as_str(), p.as_str())),
            _ => None,
        })
        .collect();
    c.port_decls()
        .filter(|(p, _)| {
            let s = &p.spec;
            down.contains(&(s.bridge.as_str(), s.name.as_str()))
                || port_ifname(s).is_some_and(|i| names.contains(i.as_str()))
                // A Linux bridge that came back concerns its ports.
                || names.contains(s.bridge.as_str())
        })
        .map(|(p, _)| p.clone())
        .collect()
}

async fn interface_exists(cx: &Ctx, decl: &PortDecl) -> bool {
    match port_ifname(&decl.spec) {
        Some(i) => matches!(cx.nl.link(&i).await, Ok(Some(_))),
        None => true,
    }
}
