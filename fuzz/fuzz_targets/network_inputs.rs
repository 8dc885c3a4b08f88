//! Every network value a control client or the config file can send (prefixes, DHCP ranges,
//! host and domain names, network names, ports, forward targets), dnsmasq's lease file as
//! the daemon reads it, and a network spec rendered into a dnsmasq config: no panics; what
//! parses prints back to the same value; no value can add a line to dnsmasq's config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd::api::BridgeKind;
use vmnetd::network::{dnsmasq, leases, resolve};
use vmnetd_api::net::{DhcpRange, DomainName, HostName, Ipv4Cidr, NetName, NetworkSpec, PortNum, SubnetSpec, Target};

macro_rules! round_trip {
    ($s:expr, $t:ty) => {
        if let Ok(v) = $s.parse::<$t>() {
            let again: $t = v.to_string().parse().expect("a printed value parses");
            assert_eq!(again, v);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    round_trip!(s, Ipv4Cidr);
    round_trip!(s, SubnetSpec);
    round_trip!(s, DhcpRange);
    round_trip!(s, HostName);
    round_trip!(s, DomainName);
    round_trip!(s, NetName);
    round_trip!(s, PortNum);
    round_trip!(s, Target);
    for name in [s.parse::<HostName>().ok().map(|h| h.to_string()), s.parse::<DomainName>().ok().map(|d| d.to_string())]
        .into_iter()
        .flatten()
    {
        assert!(!name.contains([',', '\n', '\r', '/', ' ', '=', '#']), "{name:?}");
    }
    for l in leases::parse(&s) {
        assert!(l.hostname.as_ref().is_none_or(|h| !h.as_str().contains([' ', '\n'])));
    }
    if let Ok(spec) = serde_json::from_slice::<NetworkSpec>(data) {
        let SubnetSpec::Cidr(subnet) = spec.subnet else { return };
        let Ok(decl) = resolve(&spec, subnet, BridgeKind::Builtin, b"fuzz") else { return };
        let files = dnsmasq::Files::new("/run/vmnetd".as_ref(), "/var/lib/vmnetd".as_ref(), spec.name.as_str());
        let conf = dnsmasq::render_conf(&decl, BridgeKind::Builtin, &files);
        for line in conf.lines() {
            let key = line.split('=').next().unwrap_or("");
            assert!(
                line.starts_with("# ") || (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')),
                "{line:?}"
            );
        }
        assert_eq!(conf.lines().filter(|l| l.starts_with("interface=")).count(), 1);
    }
});
