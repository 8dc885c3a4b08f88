//! The daemon's configuration: an optional TOML file, else the embedded default.
//!
//! Precedence, highest first:
//! 1. Command-line flags (`--state-dir`, `--run-dir`, `--socket`).
//! 2. The config file given with `--config`, else `/etc/vmnetd/vmnetd.toml` if it exists,
//!    else the embedded default ([`EMBEDDED_DEFAULT`]). Files are not merged: one is used.
//! 3. Built-in values for anything the file leaves out.
//!
//! Declarations (`[[tap]]`, ...) in the config file are the baseline, applied at every start.
//! Runtime declarations (CLI, libvirt hook) live in the state dir. A name declared in both is
//! the config's: the state's entry is ignored (with a warning), and the CLI cannot remove a
//! config declaration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{BridgeSpec, PortSpec, TapSpec};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmnetd/vmnetd.toml";
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot read config file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("Config file {0} is not valid")]
    Parse(String, #[source] toml::de::Error),
    #[error("Config file {0} declares {1} twice")]
    Duplicate(String, String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
}

/// `[datapath]`: how the datapath thread waits for frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathSection {
    /// After the last frame, keep polling the vhost-user rings (no guest kicks, no wake-up
    /// latency) for this long before sleeping on eventfds. 0: sleep at once. An idle daemon
    /// sleeps either way.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u32,
    /// Pin the datapath thread to this CPU (like OVS's `pmd-cpu-mask`).
    #[serde(default)]
    pub cpu: Option<usize>,
}

pub const DEFAULT_BUSY_POLL_US: u32 = 50;

fn default_busy_poll_us() -> u32 {
    DEFAULT_BUSY_POLL_US
}

impl Default for DatapathSection {
    fn default() -> Self {
        DatapathSection { busy_poll_us: DEFAULT_BUSY_POLL_US, cpu: None }
    }
}

/// `[control]`: limits on control-socket clients (see the README's threat model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// A client that sends no complete request for this long is disconnected (and one that
    /// does not read its answers or a capture for this long).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u32,
    /// Connections at once per non-root user (root is not limited).
    #[serde(default = "default_per_user")]
    pub max_connections_per_user: u32,
    /// Memory all captures together may hold for readers that are behind, in MiB.
    #[serde(default = "default_capture_mib")]
    pub capture_memory_mib: u32,
    /// Ports a non-root user may add.
    #[serde(default = "default_ports_per_user")]
    pub max_ports_per_user: u32,
}

fn default_ports_per_user() -> u32 {
    64
}

fn default_idle_timeout() -> u32 {
    60
}

fn default_per_user() -> u32 {
    32
}

fn default_capture_mib() -> u32 {
    64
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            idle_timeout_secs: default_idle_timeout(),
            max_connections_per_user: default_per_user(),
            capture_memory_mib: default_capture_mib(),
            max_ports_per_user: default_ports_per_user(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub datapath: DatapathSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default, rename = "tap")]
    pub taps: Vec<TapSpec>,
    #[serde(default, rename = "bridge")]
    pub bridges: Vec<BridgeSpec>,
    #[serde(default, rename = "port")]
    pub ports: Vec<PortSpec>,
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkConfig>,
    /// `[[flow]]`: rules of built-in bridges (see `vmnetd flow`).
    #[serde(default, rename = "flow")]
    pub flows: Vec<crate::daemon::policy::FlowConfig>,
    /// `[[mirror]]`: mirrors of built-in bridges (see `vmnetd mirror add`).
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<vmnetd_api::policy::MirrorSpec>,
    #[serde(default)]
    pub tools: ToolsSection,
    #[serde(default)]
    pub metrics: crate::daemon::metrics::MetricsSection,
}

/// `[tools]`: the programs networks run. A bare name is looked up in `PATH`, then in
/// `/usr/sbin` and `/sbin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    #[serde(default = "default_dnsmasq")]
    pub dnsmasq: PathBuf,
    #[serde(default = "default_nft")]
    pub nft: PathBuf,
}

fn default_dnsmasq() -> PathBuf {
    "dnsmasq".into()
}

fn default_nft() -> PathBuf {
    "nft".into()
}

impl Default for ToolsSection {
    fn default() -> Self {
        ToolsSection { dnsmasq: default_dnsmasq(), nft: default_nft() }
    }
}

/// `[[network]]`: a network with addresses (see `vmnetd network add`), with its static
/// leases (`[[network.lease]]`) and port forwards (`[[network.forward]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub name: vmnetd_api::net::NetName,
    pub bridge: crate::ifname::IfName,
    #[serde(default)]
    pub vlan: Option<crate::switch::VlanId>,
    #[serde(default)]
    pub subnet: vmnetd_api::net::SubnetSpec,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub nat: bool,
    #[serde(default)]
    pub dhcp: bool,
    #[serde(default)]
    pub dhcp_range: Option<vmnetd_api::net::DhcpRange>,
    #[serde(default)]
    pub dns: bool,
    #[serde(default)]
    pub domain: Option<vmnetd_api::net::DomainName>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default, rename = "lease")]
    pub leases: Vec<vmnetd_api::net::StaticLease>,
    #[serde(default, rename = "forward")]
    pub forwards: Vec<vmnetd_api::net::Forward>,
}

impl NetworkConfig {
    pub fn spec(&self) -> vmnetd_api::net::NetworkSpec {
        vmnetd_api::net::NetworkSpec {
            name: self.name.clone(),
            bridge: self.bridge.clone(),
            vlan: self.vlan,
            subnet: self.subnet,
            gateway: self.gateway,
            nat: self.nat,
            dhcp: (self.dhcp || self.dhcp_range.is_some())
                .then_some(vmnetd_api::net::DhcpSpec { range: self.dhcp_range }),
            dns: self.dns,
            domain: self.domain.clone(),
            ipv6: self.ipv6,
        }
    }
}

/// A loaded config and where it came from ("embedded default" or a path).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub origin: String,
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Config, Error> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Parse(origin.to_owned(), e))?;
        let mut seen = std::collections::HashSet::new();
        for t in &c.taps {
            let Some(n) = &t.name else {
                return Err(Error::Duplicate(origin.to_owned(), "a [[tap]] without a name".into()));
            };
            if !seen.insert(n.as_str().to_owned()) {
                return Err(Error::Duplicate(origin.to_owned(), format!("tap {n}")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for b in &c.bridges {
            if !seen.insert(b.name.as_str().to_owned()) {
                return Err(Error::Duplicate(origin.to_owned(), format!("bridge {}", b.name)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for n in &c.networks {
            if !seen.insert(n.name.as_str().to_owned()) {
                return Err(Error::Duplicate(origin.to_owned(), format!("network {}", n.name)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &c.ports {
            if !seen.insert((p.bridge.as_str().to_owned(), p.name.as_str().to_owned())) {
                return Err(Error::Duplicate(origin.to_owned(), format!("port {} of bridge {}", p.name, p.bridge)));
            }
        }
        Ok(c)
    }

    /// `--config FILE` if given (it must exist), else the default path if it exists, else the
    /// embedded default.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, Error> {
        let path = match explicit {
            Some(p) => Some(p.to_owned()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| Error::Read(p.clone(), e))?;
                let origin = p.display().to_string();
                Ok(Loaded { config: Config::parse(&text, &origin)?, origin })
            }
            None => Ok(Loaded {
                config: Config::parse(EMBEDDED_DEFAULT, "embedded default")?,
                origin: "embedded default".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        assert_eq!(c.daemon.run_dir.as_deref(), Some(Path::new("/run/vmnetd")));
        assert_eq!(c.daemon.state_dir.as_deref(), Some(Path::new("/var/lib/vmnetd")));
        // The file states the built-in values, so copying it changes nothing.
        assert_eq!(c.control, ControlSection::default());
        assert_eq!(c.datapath, DatapathSection::default());
    }

    #[test]
    fn taps_and_unknown_keys() {
        let c = Config::parse("[[tap]]\nname = \"vmtap0\"\nuser = \"nobody\"\nvnet_hdr = true\n", "t").unwrap();
        assert_eq!(c.taps.len(), 1);
        assert!(c.taps[0].vnet_hdr);
        let e = Config::parse("[daemon]\nstate_dri = \"/x\"\n", "t").unwrap_err();
        assert!(format!("{:?}", e).contains("state_dri"));
        let e = Config::parse("[[tap]]\nname=\"a\"\n[[tap]]\nname=\"a\"\n", "t").unwrap_err();
        assert_eq!(e.to_string(), "Config file t declares tap a twice");
        let e = Config::parse("[[tap]]\nname=\"bad/name\"\n", "t").unwrap_err();
        assert!(matches!(e, Error::Parse(..)));
    }

    #[test]
    fn bridges_and_ports() {
        let c = Config::parse(
            r#"
[[bridge]]
name = "lan"

[[port]]
bridge = "lan"
name = "uplink"
kind = { type = "netdev", ifname = "eth1" }
vlan = { mode = "trunk", vlans = "10,20", native = { vid = 1 } }

[[port]]
bridge = "lan"
name = "host0"
kind = { type = "internal" }
vlan = { mode = "access", vlan = 10 }
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.bridges[0].kind, crate::api::BridgeKind::Builtin);
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].vlan.to_string(), "trunk 10,20 native 1");
        let e = Config::parse("[[port]]\nbridge=\"a\"\nname=\"p\"\nkind={type=\"netdev\",ifname=\"x\"}\nvlan={mode=\"access\",vlan=4095}\n", "t").unwrap_err();
        assert!(format!("{e:?}").contains("4095"), "{e:?}");
    }

    /// The commented VXLAN example of the embedded default, uncommented, parses.
    #[test]
    fn the_default_configs_tunnel_example_parses() {
        let ex: String = EMBEDDED_DEFAULT
            .lines()
            .skip_while(|l| !l.contains("A VXLAN tunnel"))
            .skip(1)
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = Config::parse(&ex, "t").unwrap();
        let crate::api::PortKind::Vxlan { vni_map, remotes, dstport, .. } = &c.ports[0].kind else {
            panic!("{:?}", c.ports[0].kind)
        };
        assert_eq!((vni_map.len(), remotes.len(), *dstport), (2, 2, 4789));
        assert_eq!(c.ports[0].vlan.to_string(), "trunk 10,20");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        assert!(matches!(Config::load(Some(Path::new("/nonexistent/vmnetd.toml"))), Err(Error::Read(..))));
    }
}
