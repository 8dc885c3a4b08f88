//! dnsmasq's lease file, read for `vmnetd network leases`.
//!
//! One lease per line, as dnsmasq writes it (`lease_update_file` in dnsmasq's `lease.c`):
//! `EXPIRY MAC IP HOSTNAME CLIENT-ID`, `*` for an absent host name or client id, expiry 0
//! for an infinite lease; DHCPv6 leases follow a `duid ...` line and are not shown. The
//! host name comes from the client (a guest), so it is untrusted: a line whose fields do not
//! parse strictly is skipped, never shown half-read.

use std::net::Ipv4Addr;

use vmnetd_api::net::HostName;

use crate::switch::MacAddr;

/// One DHCPv4 lease of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLease {
    pub expires: Option<u64>,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<HostName>,
}

/// Most lines read (a lease file vmnetd did not write could be anything).
pub const MAX_LINES: usize = 65_536;

/// The DHCPv4 leases of a lease file's text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<FileLease> {
    let mut out = Vec::new();
    for line in text.lines().take(MAX_LINES) {
        if line.starts_with("duid ") {
            // DHCPv6 leases follow.
            break;
        }
        if let Some(l) = parse_line(line) {
            out.push(l);
        }
    }
    out
}

fn parse_line(line: &str) -> Option<FileLease> {
    let mut f = line.split(' ');
    let expiry = f.next()?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let expiry: u64 = expiry.parse().ok()?;
    let mac: MacAddr = f.next()?.parse().ok()?;
    let ip: Ipv4Addr = f.next()?.parse().ok()?;
    let hostname = match f.next()? {
        "*" => None,
        h => Some(h.parse().ok()?),
    };
    let _client_id = f.next()?;
    if f.next().is_some() {
        return None;
    }
    Some(FileLease { expires: (expiry != 0).then_some(expiry), mac, ip, hostname })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dnsmasq_lines_and_skips_the_rest() {
        let text = "1700000000 52:54:00:00:00:01 10.10.0.5 web 01:52:54:00:00:00:01\n\
                    0 52:54:00:00:00:02 10.10.0.6 * *\n\
                    1700000000 52:54:00:00:00:03 10.10.0.7 bad,name *\n\
                    1700000000 zz:54:00:00:00:03 10.10.0.7 x *\n\
                    1700000000 52:54:00:00:00:04 10.10.0.8 x * extra\n\
                    duid 00:01:00:01\n\
                    1700000000 1234 fd00::5 v6 00:01\n";
        let l = parse(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].hostname.as_ref().map(HostName::as_str), Some("web"));
        assert_eq!(l[0].expires, Some(1_700_000_000));
        assert_eq!(l[1].expires, None);
        assert_eq!(l[1].hostname, None);
        assert!(parse("").is_empty());
    }
}
