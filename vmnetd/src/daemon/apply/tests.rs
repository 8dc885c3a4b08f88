//! `apply`'s plan, pure: a table of config edits and the plan each gives.

use super::*;

const BASE: &str = r#"
[datapath]
busy_poll_us = 50

[[tap]]
name = "vmtap0"
user = "root"

[[bridge]]
name = "br0"

[[bridge]]
name = "lan"
kind = "linux"

[[port]]
bridge = "br0"
name = "vm1"
kind = { type = "vhost-user", path = "vm1.sock" }
vlan = { mode = "access", vlan = 10 }

[[port]]
bridge = "br0"
name = "up"
kind = { type = "netdev", ifname = "eth1" }
vlan = { mode = "trunk", vlans = "10,20" }

[[network]]
name = "default"
bridge = "br0"
subnet = "10.10.0.0/24"
dhcp = true

[[flow]]
bridge = "br0"
rule = "priority=10,arp actions=normal"

[[mirror]]
bridge = "br0"
name = "ids"
select_src = ["vm1"]
output_vlan = 99
"#;

fn cfg(text: &str) -> Config {
    Config::parse(text, "t").unwrap()
}

fn lines(old: &str, new: &str) -> Vec<String> {
    plan_with(old, new, &Runtime::default()).unwrap().0.iter().map(|s| s.to_string()).collect()
}

fn plan_with(old: &str, new: &str, rt: &Runtime) -> Result<(Vec<PlanStep>, Vec<Action>), ApiError> {
    plan(&cfg(old), &cfg(new), rt)
}

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

#[test]
fn the_same_file_is_an_empty_plan() {
    let (shown, actions) = plan_with(BASE, BASE, &Runtime::default()).unwrap();
    assert!(shown.is_empty() && actions.is_empty(), "{shown:?}");
}

/// Every kind of object added, removed and changed, each giving its line.
#[test]
fn a_table_of_edits_and_their_plans() {
    let table: Vec<(String, Vec<&str>)> = vec![
        // Ports.
        (
            edit("vlan = { mode = \"access\", vlan = 10 }", "vlan = { mode = \"access\", vlan = 20 }"),
            vec!["~ port br0/vm1 vlan access 10 -> access 20"],
        ),
        (
            edit("kind = { type = \"netdev\", ifname = \"eth1\" }", "kind = { type = \"netdev\", ifname = \"eth2\" }"),
            vec![r#"! port br0/up kind {"type":"netdev","ifname":"eth1"} -> {"type":"netdev","ifname":"eth2"}"#],
        ),
        (
            BASE.to_owned()
                + "\n[[port]]\nbridge = \"lan\"\nname = \"p2\"\nkind = { type = \"netdev\", ifname = \"eth3\" }\n",
            vec!["+ port lan/p2 netdev access 1"],
        ),
        (
            edit("[[port]]\nbridge = \"br0\"\nname = \"up\"", "[[port]]\nbridge = \"lan\"\nname = \"up\""),
            vec!["- port br0/up", "+ port lan/up netdev trunk 10,20"],
        ),
        // TAPs.
        (edit("user = \"root\"", "user = \"root\"\nvnet_hdr = true"), vec!["! tap vmtap0 (deleted and created again)"]),
        (edit("name = \"vmtap0\"", "name = \"vmtap1\""), vec!["- tap vmtap0", "+ tap vmtap1 user root"]),
        // Bridges.
        (BASE.to_owned() + "\n[[bridge]]\nname = \"br9\"\n", vec!["+ bridge br9 builtin"]),
        (edit("[[bridge]]\nname = \"lan\"\nkind = \"linux\"\n", ""), vec!["- bridge lan"]),
        (
            edit("[[bridge]]\nname = \"br0\"\n", "[[bridge]]\nname = \"br0\"\nageing = 60\n"),
            vec!["~ bridge br0 ageing - -> 60"],
        ),
        (
            edit("[[bridge]]\nname = \"br0\"\n", "[[bridge]]\nname = \"br0\"\nkind = \"linux\"\n"),
            vec![
                "! bridge br0 (its ports are re-attached)",
                "! network default (gateway, dnsmasq and NAT set up again)",
                "~ flows br0 1 -> 1 rules",
            ],
        ),
        // Networks.
        (
            edit("dhcp = true", "dhcp = true\ndns = true"),
            vec!["! network default (gateway, dnsmasq and NAT set up again)"],
        ),
        (edit("name = \"default\"", "name = \"other\""), vec!["- network default", "+ network other on br0"]),
        // Rules and mirrors.
        (edit("priority=10,arp actions=normal", "priority=10,arp actions=drop"), vec!["~ flows br0 1 -> 1 rules"]),
        (edit("output_vlan = 99", "output_vlan = 98"), vec!["! mirror br0/ids"]),
        (edit("name = \"ids\"", "name = \"cap\""), vec!["- mirror br0/ids", "+ mirror br0/cap"]),
        // Settings.
        (edit("busy_poll_us = 50", "busy_poll_us = 0"), vec!["~ setting datapath.busy_poll_us 50 -> 0"]),
        (
            BASE.to_owned() + "\n[control]\nidle_timeout_secs = 5\n",
            vec!["* setting control (takes effect at the next restart)"],
        ),
    ];
    for (new, want) in table {
        let got = lines(BASE, &new);
        assert_eq!(got, want, "edit:\n{new}");
        // And back: the inverse edit plans the way home.
        let back = lines(&new, BASE);
        assert_eq!(back.len(), want.len(), "{back:?} vs {want:?}");
    }
}

/// A VLAN change is a change in place (no detach/attach); a kind change is not.
#[test]
fn vlan_changes_are_in_place() {
    let new = edit("vlan = { mode = \"access\", vlan = 10 }", "vlan = { mode = \"access\", vlan = 20 }");
    let (_, actions) = plan_with(BASE, &new, &Runtime::default()).unwrap();
    assert!(
        matches!(actions.as_slice(), [Action::ChangePort(a, b)] if a.vlan.to_string() == "access 10" && b.vlan.to_string() == "access 20"),
        "{actions:?}"
    );
}

/// Removals run before additions, bridges come before their ports and after their ports go,
/// rules and mirrors last; every action's inverse is its opposite.
#[test]
fn actions_run_in_dependency_order() {
    let new = BASE.replace("name = \"br0\"", "name = \"br1\"").replace("bridge = \"br0\"", "bridge = \"br1\"");
    let (_, actions) = plan_with(BASE, &new, &Runtime::default()).unwrap();
    let pos = |f: &dyn Fn(&Action) -> bool| actions.iter().position(f).unwrap();
    let del_port = pos(&|a| matches!(a, Action::DelPort(_)));
    let del_net = pos(&|a| matches!(a, Action::DelNetwork(_)));
    let del_br = pos(&|a| matches!(a, Action::DelBridge(_)));
    let add_br = pos(&|a| matches!(a, Action::AddBridge(_)));
    let add_port = pos(&|a| matches!(a, Action::AddPort(_)));
    let add_net = pos(&|a| matches!(a, Action::AddNetwork(_)));
    let flows = pos(&|a| matches!(a, Action::Flows(b, ..) if b == "br1"));
    assert!(del_net < del_port && del_port < del_br && del_br < add_br && add_br < add_port && add_port < add_net);
    assert!(add_net < flows, "{actions:?}");
    for a in &actions {
        assert_eq!(&a.inverse().inverse(), a);
    }
}

#[test]
fn runtime_declarations_are_taken_over_or_refused() {
    let extra = "\n[[port]]\nbridge = \"br0\"\nname = \"cli\"\nkind = { type = \"internal\" }\n";
    let new = BASE.to_owned() + extra;
    let spec = cfg(&new).ports.into_iter().find(|p| p.name.as_str() == "cli").unwrap();
    let mut rt = Runtime::default();
    rt.ports.insert("br0/cli".into(), spec.clone());
    let (shown, actions) = plan_with(BASE, &new, &rt).unwrap();
    assert_eq!(shown[0].to_string(), "~ port br0/cli (declared at runtime; now the file's)");
    assert_eq!(actions, vec![Action::Adopt(Kind::Port, "br0/cli".into())]);
    // Declared otherwise at runtime: refused before anything changes.
    let mut other = spec;
    other.vlan = crate::switch::VlanMode::Access { vlan: crate::switch::VlanId::new(30).unwrap() };
    rt.ports.insert("br0/cli".into(), other);
    let e = plan_with(BASE, &new, &rt).unwrap_err();
    assert!(e.message.contains("declared at runtime with other settings"), "{}", e.message);
    // A bridge that runtime ports use cannot go.
    let e = plan_with(
        BASE,
        &edit("[[bridge]]\nname = \"lan\"\nkind = \"linux\"\n", ""),
        &Runtime {
            ports: [(
                "lan/x".to_owned(),
                cfg(&(BASE.to_owned()
                    + "\n[[port]]\nbridge = \"lan\"\nname = \"x\"\nkind = { type = \"netdev\", ifname = \"e\" }\n"))
                .ports
                .pop()
                .unwrap(),
            )]
            .into(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.message.contains("declared at runtime"), "{}", e.message);
}

#[test]
fn files_that_cannot_be_applied_are_refused() {
    let orphan = BASE.to_owned() + "\n[[port]]\nbridge = \"nope\"\nname = \"p\"\nkind = { type = \"internal\" }\n";
    assert!(plan_with(BASE, &orphan, &Runtime::default()).unwrap_err().message.contains("not declared"));
    let unlocked = edit("vlans = \"10,20\" }", "vlans = \"10,20\" }\nlock_mac = true");
    assert!(plan_with(BASE, &unlocked, &Runtime::default()).unwrap_err().message.contains("--lock-mac"));
}

/// What `config dump` prints parses back to the same config (so `dump | apply` is empty).
#[test]
fn a_dumped_config_parses_back_the_same() {
    let mut text = BASE.to_owned();
    text.push_str(
        r#"
[[port]]
bridge = "br0"
name = "vx"
kind = { type = "vxlan", local = "192.0.2.1", remotes = ["192.0.2.2"], vni_map = [{ vlan = 10, vni = 1010 }, { vlan = 20, vni = 1020 }] }
vlan = { mode = "trunk", vlans = "10,20" }
macs = ["52:54:00:00:00:01"]
isolated = true
ingress_rate_kbit = 1000
external_ids = { "vm-name" = "web" }

[[network.forward]]
proto = "tcp"
host_port = 8080
to = "10.10.0.5:80"

[[network.lease]]
mac = "52:54:00:12:34:56"
ip = "10.10.0.5"
name = "web"

[metrics]
listen = "127.0.0.1:9464"
"#,
    );
    let c = cfg(&text);
    let dumped = toml::to_string(&c).unwrap();
    let back = Config::parse(&dumped, "dump").unwrap();
    assert_eq!(back, c, "{dumped}");
    assert!(plan(&c, &back, &Runtime::default()).unwrap().0.is_empty());
}
