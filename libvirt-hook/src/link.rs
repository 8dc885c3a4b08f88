//! What the hook needs to know about a kernel interface, asked of rtnetlink in the hook's
//! own network namespace (sysfs may show another one): whether it is a TUN/TAP device, and
//! its address. One synchronous request; no runtime.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The facts about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub index: u32,
    pub is_tun: bool,
    pub mac: Option<[u8; 6]>,
}

/// The interface named `name`, or `None` when there is none.
pub fn query(name: &str) -> io::Result<Option<Facts>> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(None);
    };
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut get = LinkMessage::default();
    get.header.index = index;
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetLink(get));
    msg.header.flags = NLM_F_REQUEST;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rx = vec![0u8; 64 * 1024];
    let n = sock.recv(&mut &mut rx[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => Ok(Some(facts(&l))),
        NetlinkPayload::Error(e) if e.code.is_some() => {
            let errno = e.code.map_or(0, |c| -c.get());
            if errno == libc::ENODEV {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(errno))
            }
        }
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected rtnetlink reply {other:?}"))),
    }
}

fn facts(l: &LinkMessage) -> Facts {
    let mut f = Facts { index: l.header.index, is_tun: false, mac: None };
    for a in &l.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => f.mac = m.as_slice().try_into().ok(),
            LinkAttribute::LinkInfo(infos) => f.is_tun |= infos.contains(&LinkInfo::Kind(InfoKind::Tun)),
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_no_tap_and_missing_is_none() {
        let lo = super::query("lo").unwrap().unwrap();
        assert!(!lo.is_tun);
        assert_eq!(lo.mac, Some([0; 6]));
        assert_eq!(super::query("no-such-if0").unwrap(), None);
    }
}
