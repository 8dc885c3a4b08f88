//! The libvirt hook's XML path on arbitrary input: parsing, planning at every phase and
//! `translate` never panic; a translation re-parses, keeps every interface's MAC, and is a
//! fixed point (translating it again changes nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmnetd_api::proto::BridgeKind;
use vmnetd_libvirt_hook::domain;
use vmnetd_libvirt_hook::plan::{self, Facts, Phase};
use vmnetd_libvirt_hook::translate::{self, Options};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let facts = Facts {
        bridges: vec![("vmnet0".into(), BridgeKind::Builtin), ("lvbr0".into(), BridgeKind::Linux)],
        run_dir: "/run/vmnetd".into(),
        qemu_owner: "64055:64055".into(),
    };
    if let Ok((d, _)) = domain::parse(s) {
        for phase in [Phase::Prepare, Phase::Started, Phase::Reconnect, Phase::Release, Phase::Other] {
            let _ = plan::plan(&d, phase, &facts);
        }
        let _ = plan::may_need_daemon(&d);
    }
    let opts = Options { builtin_bridges: vec!["vmnet0".into()], run_dir: "/run/vmnetd".into(), mac_seed: Some(1) };
    if let Ok(t) = translate::translate(s, &opts) {
        let (after, _) = domain::parse(&t.xml).expect("a translation parses");
        if let Ok((before, _)) = domain::parse(s) {
            assert_eq!(before.interfaces.len(), after.interfaces.len());
            for (b, a) in before.interfaces.iter().zip(&after.interfaces) {
                if let Some(m) = b.mac {
                    assert_eq!(a.mac, Some(m));
                }
            }
        }
        let again = translate::translate(&t.xml, &opts).expect("a translation translates");
        assert_eq!(again.xml, t.xml, "translate is a fixed point");
    }
});
