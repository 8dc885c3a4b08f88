//! The backends and the reconciler against the kernel, each test in a private network
//! namespace (root; built with the `root-tests` feature, which `tests/run.sh` turns on).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{BridgeKind, BridgeSpec, PortKind, PortSpec, PortStatus};
use crate::datapath::{DatapathHandle, Settings};
use crate::ifname::IfName;
use crate::netlink::Netlink;
use crate::state::PortDecl;
use crate::switch::VlanMode;
use crate::tap::Policy;

use super::{backend, identity_of, BridgeBackend, Ctx};

/// Runs `f` on a thread in a fresh network namespace, with a tokio runtime (its threads,
/// the datapath's, and `ip` inherit the namespace; everything dies with it).
fn in_netns<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F + Send) {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (network namespaces); run tests/run.sh as root");
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            ip("link set lo up");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(f());
        });
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    });
}

#[track_caller]
fn ip(args: &str) {
    let o = Command::new("ip").args(args.split_whitespace()).output().expect("ip");
    assert!(o.status.success(), "ip {args}: {}", String::from_utf8_lossy(&o.stderr));
}

fn name(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

fn ctx(run_dir: &std::path::Path) -> Ctx {
    Ctx {
        nl: Netlink::connect().unwrap(),
        dp: Arc::new(DatapathHandle::spawn(Settings::default(), None).unwrap()),
        run_dir: run_dir.to_owned(),
        taps: Arc::from(Vec::new()),
    }
}

fn netdev(bridge: &str, port: &str, ifname: &str) -> PortDecl {
    PortDecl::new(
        PortSpec {
            bridge: name(bridge),
            name: name(port),
            kind: PortKind::Netdev { ifname: name(ifname), io: Default::default() },
            vlan: VlanMode::default(),
            macs: Vec::new(),
            lock_mac: false,
            isolated: false,
            ingress_rate_kbit: None,
            ingress_burst_kb: None,
            egress_rate_kbit: None,
            egress_burst_kb: None,
            external_ids: Default::default(),
        },
        false,
    )
}

async fn status(b: &dyn BridgeBackend, cx: &Ctx, d: &PortDecl) -> PortStatus {
    b.views(cx, std::slice::from_ref(d)).await.unwrap().remove(0).status
}

fn bridge(name_: &str, kind: BridgeKind) -> BridgeSpec {
    BridgeSpec { name: name(name_), kind, ageing: None, max_macs: None, stp: None }
}

#[test]
fn linux_backend_creates_adopts_attaches_reports_and_releases() {
    in_netns(|| async {
        let dir = tempfile::tempdir().unwrap();
        let cx = ctx(dir.path());
        let lb = backend(BridgeKind::Linux);
        let spec = bridge("lbr0", BridgeKind::Linux);
        assert!(lb.create(&cx, &spec).await.unwrap(), "made now");
        assert!(!lb.create(&cx, &spec).await.unwrap(), "adopted the second time");
        ip("link add v0 type veth peer name v0p");
        let d = netdev("lbr0", "p0", "v0");
        assert_eq!(status(lb, &cx, &d).await.to_string(), "detached: v0 is not a port of lbr0");
        assert!(!lb.attach(&cx, &d, Policy::Declare).await.unwrap());
        assert_eq!(status(lb, &cx, &d).await, PortStatus::Up { queue_pairs: None });
        // Someone releases it: the backend says so, and wants it repaired.
        ip("link set v0 nomaster");
        let st = status(lb, &cx, &d).await;
        assert!(matches!(st, PortStatus::Detached { .. }) && lb.needs_repair(&st), "{st}");
        lb.attach(&cx, &d, Policy::Restore).await.unwrap();
        assert_eq!(status(lb, &cx, &d).await, PortStatus::Up { queue_pairs: None });
        // An interface enslaved elsewhere is refused; so are kinds a Linux bridge cannot have.
        ip("link add other type bridge");
        ip("link add v1 type veth peer name v1p");
        ip("link set v1 master other");
        let e = lb.attach(&cx, &netdev("lbr0", "p1", "v1"), Policy::Declare).await.unwrap_err();
        assert!(e.message.contains("other"), "{}", e.message);
        let mut internal = netdev("lbr0", "p2", "x");
        internal.spec.kind = PortKind::Internal { ifname: None };
        assert!(lb.check_port(&internal.spec).is_err());
        assert!(lb.fdb(&cx, &name("lbr0"), None).await.is_err());
        // A TAP nobody declared is followed by identity: a new one of the same name is not it.
        ip("tuntap add t0 mode tap");
        let mut t = netdev("lbr0", "p3", "t0");
        t.attached = identity_of(&cx, &t.spec).await.unwrap();
        assert!(t.attached.is_some());
        lb.attach(&cx, &t, Policy::Declare).await.unwrap();
        ip("link del t0");
        ip("tuntap add t0 mode tap");
        assert!(matches!(status(lb, &cx, &t).await, PortStatus::IdentityChanged { .. }));
        assert!(lb.attach(&cx, &t, Policy::Restore).await.is_err());
        // Detach releases; destroy deletes the bridge it made (only that).
        lb.detach(&cx, &d).await;
        assert!(matches!(status(lb, &cx, &d).await, PortStatus::Detached { .. }));
        lb.destroy(&cx, &crate::state::BridgeDecl { spec: spec.clone(), created: true }).await;
        assert!(cx.nl.link(&name("lbr0")).await.unwrap().is_none());
        lb.destroy(&cx, &crate::state::BridgeDecl { spec: bridge("other", BridgeKind::Linux), created: false }).await;
        assert!(cx.nl.link(&name("other")).await.unwrap().is_some(), "an adopted bridge stays");
    });
}

#[test]
fn builtin_backend_attaches_every_edge_kind_and_sees_failures() {
    in_netns(|| async {
        let dir = tempfile::tempdir().unwrap();
        let cx = ctx(dir.path());
        let bb = backend(BridgeKind::Builtin);
        bb.create(&cx, &bridge("br0", BridgeKind::Builtin)).await.unwrap();
        ip("link add v0 type veth peer name v0p");
        ip("link set v0p up");
        let d = netdev("br0", "p0", "v0");
        assert!(matches!(status(bb, &cx, &d).await, PortStatus::Missing { .. }));
        assert!(!bb.attach(&cx, &d, Policy::Declare).await.unwrap());
        let v = bb.views(&cx, std::slice::from_ref(&d)).await.unwrap().remove(0);
        assert_eq!(v.status, PortStatus::Up { queue_pairs: None });
        assert!(v.counters.is_some());
        // An internal port makes its TAP, and removing the port deletes it.
        let mut i = netdev("br0", "host0", "x");
        i.spec.kind = PortKind::Internal { ifname: None };
        i.created = bb.attach(&cx, &i, Policy::Declare).await.unwrap();
        assert!(i.created && cx.nl.link(&name("host0")).await.unwrap().is_some());
        bb.detach(&cx, &i).await;
        let gone = Instant::now() + Duration::from_secs(5);
        while cx.nl.link(&name("host0")).await.unwrap().is_some() && Instant::now() < gone {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cx.nl.link(&name("host0")).await.unwrap().is_none());
        // A vhost-user port waits for its frontend.
        let mut vh = netdev("br0", "vm1", "x");
        vh.spec.kind = PortKind::VhostUser {
            path: "vm1.sock".into(),
            mode: crate::api::VhostMode::Server,
            owner: None,
            queues: 1,
        };
        bb.attach(&cx, &vh, Policy::Declare).await.unwrap();
        assert_eq!(status(bb, &cx, &vh).await, PortStatus::WaitingForFrontend);
        assert!(dir.path().join("vm1.sock").exists());
        bb.detach(&cx, &vh).await;
        assert!(!dir.path().join("vm1.sock").exists());
        // The interface goes: the datapath's edge fails, the port is down and wants repair;
        // when it is back, attaching again brings it up.
        ip("link del v0");
        let end = Instant::now() + Duration::from_secs(5);
        let mut st = status(bb, &cx, &d).await;
        while !bb.needs_repair(&st) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            st = status(bb, &cx, &d).await;
        }
        assert!(matches!(st, PortStatus::Down { .. }), "{st}");
        ip("link add v0 type veth peer name v0p");
        bb.attach(&cx, &d, Policy::Restore).await.unwrap();
        assert_eq!(status(bb, &cx, &d).await, PortStatus::Up { queue_pairs: None });
        assert!(bb.fdb(&cx, &name("br0"), None).await.is_ok());
    });
}

/// The reconciler, driven by link notifications alone (its sweep is 30 s away): a built-in
/// bridge port whose interface is deleted and made again, and a Linux bridge port someone
/// releases, are back within a second or two; a round for one changed link examines that
/// one port, not every port.
#[test]
fn the_reconciler_repairs_from_link_events_and_costs_the_changed_ports() {
    use crate::daemon::reconcile::{self, Event};
    in_netns(|| async {
        let dir = tempfile::tempdir().unwrap();
        let cx = ctx(dir.path());
        let core = crate::daemon::core::Core::for_tests(cx.nl.clone(), cx.dp.clone(), dir.path());
        let core = Arc::new(tokio::sync::Mutex::new(core));
        {
            let mut c = core.lock().await;
            c.bridge_add(bridge("br0", BridgeKind::Builtin)).await.unwrap();
            c.bridge_add(bridge("lbr0", BridgeKind::Linux)).await.unwrap();
            ip("link add v0 type veth peer name v0p");
            ip("link add v1 type veth peer name v1p");
            let root = crate::daemon::authz::Caller::ROOT;
            c.port_add(netdev("br0", "p0", "v0").spec, &root).await.unwrap();
            c.port_add(netdev("lbr0", "p1", "v1").spec, &root).await.unwrap();
            // Forty ports whose interfaces are gone.
            for k in 0..40 {
                ip(&format!("link add gone{k} type veth peer name gonep{k}"));
                c.port_add(netdev("br0", &format!("m{k}"), &format!("gone{k}")).spec, &root).await.unwrap();
                ip(&format!("link del gone{k}"));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        reconcile::watch_links(tx).unwrap();
        let task = tokio::spawn(reconcile::run(core.clone(), rx));
        let state = |port: &'static str| {
            let core = core.clone();
            async move {
                let c = core.lock().await;
                let list = c.port_list(Default::default()).await.unwrap();
                list.into_iter().find(|p| p.name.as_str() == port).unwrap().status
            }
        };
        let wait_up = |port: &'static str| async move {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                let st = state(port).await;
                if st.is_up() || Instant::now() > end {
                    return st;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        ip("link del v0");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!state("p0").await.is_up());
        ip("link add v0 type veth peer name v0p");
        let t = Instant::now();
        assert_eq!(wait_up("p0").await, PortStatus::Up { queue_pairs: None });
        assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
        ip("link set v1 nomaster");
        assert_eq!(wait_up("p1").await, PortStatus::Up { queue_pairs: None });
        // One changed link: one port looked at, of 42.
        let r = reconcile::round(&core, &[Event::Link("v0".into())]).await;
        assert_eq!(r.examined, 1);
        let r = reconcile::round(&core, &[Event::Sweep]).await;
        assert_eq!(r.examined, 42);
        task.abort();
    });
}
