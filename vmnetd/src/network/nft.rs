//! vmnetd's nftables table, `inet vmnetd`: NAT, forward filtering and port forwards of every
//! network, built as typed statements (the `nftables` crate) and applied with `nft -j`.
//!
//! The table is vmnetd's alone. Every change rebuilds it whole in one transaction
//! (`add table; delete table; add table; chains; rules`), so it never holds a stale or
//! duplicated rule and a failed change leaves the previous table. Nothing else is touched:
//! no other table, no flush. Per network (gateway interface `IF`, subnet `S`):
//!
//! ```text
//! prerouting (nat, dstnat)   fib daddr type local tcp dport HOST dnat ip to ADDR:PORT     (each forward)
//! output     (nat, -100)     ip daddr != 127.0.0.0/8 fib daddr type local tcp dport HOST dnat ip to ADDR:PORT
//! postrouting(nat, srcnat)   oifname != IF ip saddr S masquerade                           (--nat)
//!                            oifname IF ip saddr S ct status dnat masquerade               (hairpin inside S)
//!                            oifname IF ct status dnat masquerade                          (no --nat: VMs have no route back)
//! forward    (filter, 0)     iifname IF oifname IF accept     (inside the network; br_netfilter's bridged frames)
//!                            oifname IF ct state established,related accept
//!                            oifname IF ct status dnat accept
//!                            oifname IF drop                  (nothing else enters a network, from another network neither)
//!                            iifname IF ct state established,related accept
//!                            iifname IF ip saddr != S drop    (no spoofed sources out of a network)
//!                            iifname IF accept | drop         (--nat: out to the world; else isolated)
//!            then, per uplink   iifname UP drop                  (uplinks whose forwarding vmnetd switched on)
//! ```
//!
//! The last rule keeps what vmnetd switched on for its networks' replies (`forwarding` on
//! an uplink that had it off) from routing anything else that arrives there to the host's
//! other interfaces (a VPN, a container bridge): such packets were dropped before vmnetd,
//! and still are.
//!
//! An accept here does not override another table's drop (nftables runs every base chain
//! of a hook); a host firewall with a forward policy of drop must allow the networks itself.
//!
//! When something else removes the table (`nft flush ruleset`, a firewall reload), vmnetd
//! hears it through nftables' netlink notifications ([`watch`]) and puts the table back
//! within a second, and says so in its log; a check every 30 s catches a lost notification.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, NfObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use vmnetd_api::net::{Forward, Ipv4Cidr, Proto};

pub const TABLE: &str = "vmnetd";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nft failed to apply vmnetd's table")]
    Apply(#[source] nftables::helper::NftablesError),
    #[error("nft task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// What the table needs to know of one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRules {
    pub name: String,
    pub iface: String,
    pub subnet: Ipv4Cidr,
    pub nat: bool,
    pub forwards: Vec<Forward>,
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn prefix(c: &Ipv4Cidr) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(c.addr().to_string())),
        len: u32::from(c.prefix_len()),
    }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT { key: key.into(), family: None, dir: None }))
}

fn daddr_local() -> Statement<'static> {
    let mut flags = std::collections::HashSet::new();
    flags.insert(FibFlag::Daddr);
    m(Expression::Named(NamedExpression::Fib(Fib { result: FibResult::Type, flags })), Operator::EQ, s("local"))
}

fn dport(p: Proto, port: u16) -> Statement<'static> {
    let proto = match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    m(payload(proto, "dport"), Operator::EQ, Expression::Number(u32::from(port)))
}

fn dnat(to: Ipv4Addr, port: u16) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(s(to.to_string())),
        family: Some(nftables::stmt::NATFamily::IP),
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}

fn established() -> Statement<'static> {
    m(ct("state"), Operator::IN, Expression::List(vec![s("established"), s("related")]))
}

fn dnatted() -> Statement<'static> {
    m(ct("status"), Operator::IN, s("dnat"))
}

/// The table's chains and rules for `nets`, as `(chain, statements, comment)`.
pub fn rules(nets: &[NetRules], uplinks: &[String]) -> Vec<(&'static str, Vec<Statement<'static>>, String)> {
    let mut out = Vec::new();
    for n in nets {
        let c = format!("vmnetd network {}", n.name);
        let oif = |op| m(meta(MetaKey::Oifname), op, s(n.iface.clone()));
        let iif = |op| m(meta(MetaKey::Iifname), op, s(n.iface.clone()));
        for f in &n.forwards {
            let (hp, to, tp) = (f.host_port.get(), f.to.addr, f.to.port.get());
            out.push(("prerouting", vec![daddr_local(), dport(f.proto, hp), dnat(to, tp)], c.clone()));
            let not_lo = m(
                payload("ip", "daddr"),
                Operator::NEQ,
                prefix(&Ipv4Cidr::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_else(|_| unreachable!())),
            );
            out.push(("output", vec![not_lo, daddr_local(), dport(f.proto, hp), dnat(to, tp)], c.clone()));
        }
        let saddr_in = || m(payload("ip", "saddr"), Operator::EQ, prefix(&n.subnet));
        if n.nat {
            out.push(("postrouting", vec![oif(Operator::NEQ), saddr_in(), Statement::Masquerade(None)], c.clone()));
        }
        if !n.forwards.is_empty() {
            let mut r = vec![oif(Operator::EQ)];
            if n.nat {
                r.push(saddr_in());
            }
            r.extend([dnatted(), Statement::Masquerade(None)]);
            out.push(("postrouting", r, c.clone()));
        }
        // Within the network (bridged frames when br_netfilter hands them to this hook).
        out.push(("forward", vec![iif(Operator::EQ), oif(Operator::EQ), Statement::Accept(None)], c.clone()));
        out.push(("forward", vec![oif(Operator::EQ), established(), Statement::Accept(None)], c.clone()));
        out.push(("forward", vec![oif(Operator::EQ), dnatted(), Statement::Accept(None)], c.clone()));
        out.push(("forward", vec![oif(Operator::EQ), Statement::Drop(None)], c.clone()));
        out.push(("forward", vec![iif(Operator::EQ), established(), Statement::Accept(None)], c.clone()));
        out.push((
            "forward",
            vec![iif(Operator::EQ), m(payload("ip", "saddr"), Operator::NEQ, prefix(&n.subnet)), Statement::Drop(None)],
            c.clone(),
        ));
        out.push((
            "forward",
            vec![iif(Operator::EQ), if n.nat { Statement::Accept(None) } else { Statement::Drop(None) }],
            c,
        ));
    }
    if !nets.is_empty() {
        for u in uplinks {
            out.push((
                "forward",
                vec![m(meta(MetaKey::Iifname), Operator::EQ, s(u.clone())), Statement::Drop(None)],
                format!("vmnetd: forwarding on {u} is for vmnetd's networks only"),
            ));
        }
    }
    out
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table { family: NfFamily::INet, name: TABLE.into(), handle: None })
}

/// The transaction that makes the table exactly `nets` (or removes it, for none).
pub fn batch(nets: &[NetRules], uplinks: &[String]) -> nftables::schema::Nftables<'static> {
    let mut b = Batch::new();
    // `add` first so that `delete` cannot fail on a missing table.
    b.add(table());
    b.delete(table());
    if nets.is_empty() {
        return b.to_nftables();
    }
    b.add(table());
    let chains: [(&str, NfChainType, NfHook, i32); 4] = [
        ("prerouting", NfChainType::NAT, NfHook::Prerouting, -100),
        ("output", NfChainType::NAT, NfHook::Output, -100),
        ("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
        ("forward", NfChainType::Filter, NfHook::Forward, 0),
    ];
    for (name, ty, hook, prio) in chains {
        b.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(ty),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        }));
    }
    for (chain, expr, comment) in rules(nets, uplinks) {
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: chain.into(),
            expr: expr.into(),
            comment: Some(comment.into()),
            ..Default::default()
        }));
    }
    b.to_nftables()
}

/// Applies [`batch`] with `nft -j -f -` (off the async threads).
pub async fn apply(nft: &Path, nets: &[NetRules], uplinks: &[String]) -> Result<(), Error> {
    let doc = batch(nets, uplinks);
    let nft: PathBuf = nft.to_owned();
    tokio::task::spawn_blocking(move || {
        nftables::helper::apply_ruleset_with_args(&doc, Some(nft.as_os_str()), std::iter::empty::<&str>())
    })
    .await
    .map_err(Error::Join)?
    .map_err(Error::Apply)
}

/// How many rules the table has in the kernel now (`nft -j list table inet vmnetd`); `None`
/// if it is not there.
pub async fn present_rules(nft: &Path) -> Option<usize> {
    let nft: PathBuf = nft.to_owned();
    let listed = tokio::task::spawn_blocking(move || {
        nftables::helper::get_current_ruleset_with_args(Some(nft.as_os_str()), ["list", "table", "inet", TABLE])
    })
    .await
    .ok()?
    .ok()?;
    let mut has_table = false;
    let mut rules = 0;
    for o in listed.objects.iter() {
        match o {
            NfObject::ListObject(NfListObject::Table(t)) if t.name == TABLE => has_table = true,
            NfObject::ListObject(NfListObject::Rule(_)) => rules += 1,
            _ => {}
        }
    }
    has_table.then_some(rules)
}

/// Listens for nftables changes (`NFNLGRP_NFTABLES` on a `NETLINK_NETFILTER` socket) on a
/// thread of its own, and calls `changed` for each burst of notifications.
pub fn watch(changed: impl Fn() + Send + 'static) -> std::io::Result<()> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    const NFNLGRP_NFTABLES: u32 = 7;
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind(&SocketAddr::new(0, 0))?;
    sock.add_membership(NFNLGRP_NFTABLES)?;
    std::thread::Builder::new().name("vmnetd-nftwatch".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sock.recv(&mut &mut buf[..], 0) {
                Ok(_) => changed(),
                // ENOBUFS: notifications were lost; a check is due all the same.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("nftables notifications: {e}; the table is checked every 30 s only");
                    return;
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_one_transaction_of_our_table_only() {
        let f: Forward = serde_json::from_str(r#"{"proto":"tcp","host_port":8080,"to":"10.10.0.5:80"}"#).unwrap();
        let nets = [NetRules {
            name: "lan".into(),
            iface: "vmn-lan".into(),
            subnet: "10.10.0.0/24".parse().unwrap(),
            nat: true,
            forwards: vec![f],
        }];
        let json = serde_json::to_value(batch(&nets, &["eth9".to_owned()])).unwrap();
        let text = json.to_string();
        assert!(
            text.starts_with(r#"{"nftables":[{"add":{"table":{"family":"inet","name":"vmnetd"}}},{"delete":{"table""#),
            "{text}"
        );
        assert!(!text.contains("flush"), "{text}");
        assert!(text.contains(r#""dnat":{"addr":"10.10.0.5","family":"ip","port":80}"#), "{text}");
        assert!(text.contains(r#""masquerade""#), "{text}");
        let n_rules = json["nftables"].as_array().unwrap().iter().filter(|o| o["add"]["rule"].is_object()).count();
        assert_eq!(n_rules, rules(&nets, &["eth9".to_owned()]).len());
        assert!(json.to_string().contains("forwarding on eth9 is for vmnetd's networks only"));
        // Every rule is in our table.
        assert!(json["nftables"].as_array().unwrap().iter().all(|o| {
            let x = o.get("add").or_else(|| o.get("delete")).unwrap();
            x.as_object().unwrap().values().all(|v| v["table"] == TABLE || v["name"] == TABLE)
        }));
        let empty = serde_json::to_value(batch(&[], &["eth9".to_owned()])).unwrap();
        assert_eq!(empty["nftables"].as_array().unwrap().len(), 2);
    }
}
