//! Every CI run: parsing, planning and `translate` on mangled real domain XML never panic,
//! and a translation is a fixed point. (`fuzz/` runs the same checks under libFuzzer.)

use std::path::PathBuf;

use proptest::prelude::*;
use vmnetd_api::proto::BridgeKind;
use vmnetd_libvirt_hook::domain;
use vmnetd_libvirt_hook::plan::{self, Facts, Phase};
use vmnetd_libvirt_hook::translate::{self, Options};

fn fixtures() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "xml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    v.sort();
    v
}

fn check(s: &str) {
    let facts = Facts {
        bridges: vec![("vmnet0".into(), BridgeKind::Builtin), ("lvbr0".into(), BridgeKind::Linux)],
        run_dir: "/run/vmnetd".into(),
        qemu_owner: "64055:64055".into(),
    };
    if let Ok((d, _)) = domain::parse(s) {
        for phase in [Phase::Prepare, Phase::Started, Phase::Reconnect, Phase::Release] {
            let _ = plan::plan(&d, phase, &facts);
        }
    }
    let opts = Options { builtin_bridges: vec!["vmnet0".into()], run_dir: "/run/vmnetd".into(), mac_seed: Some(3) };
    if let Ok(t) = translate::translate(s, &opts) {
        let again = translate::translate(&t.xml, &opts).expect("a translation translates again");
        assert_eq!(again.xml, t.xml);
    }
}

/// Edits that keep most of the structure: cut, duplicate or replace a slice.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Dup(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let tokens = prop::sample::select(vec![
        "<",
        ">",
        "/>",
        "</interface>",
        "<interface type='bridge'>",
        "<source bridge='vmnet0'/>",
        "'",
        "\"",
        "&",
        "&amp;",
        "<vlan><tag id='4095'/></vlan>",
        "<mac address='52:54:00:00:00:01'/>",
        "<metadata/>",
        "xmlns:x='urn:vmnetd:libvirt:1'",
        "<x:port mac='52:54:00:00:00:01' vlan='7'/>",
        "\u{0}",
        "é",
    ]);
    prop_oneof![
        (any::<usize>(), 0usize..64).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), prop_oneof![tokens.prop_map(str::to_owned), "\\PC{0,12}"])
            .prop_map(|(a, s)| Edit::Insert(a, s)),
        (any::<usize>(), 0usize..200).prop_map(|(a, n)| Edit::Dup(a, n)),
    ]
}

fn at(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut s: String, e: &Edit) -> String {
    match e {
        Edit::Delete(a, n) => {
            let a = at(&s, *a);
            let b = at(&s, (a + n).min(s.len()));
            if b > a {
                s.replace_range(a..b, "");
            }
        }
        Edit::Insert(a, t) => {
            let a = at(&s, *a);
            s.insert_str(a, t);
        }
        Edit::Dup(a, n) => {
            let a = at(&s, *a);
            let b = at(&s, (a + n).min(s.len()));
            let piece = s[a..b].to_owned();
            s.insert_str(b, &piece);
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mangled_domains_never_panic(which in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let fx = fixtures();
        let mut s = fx[which.index(fx.len())].clone();
        for e in &edits {
            s = apply(s, e);
        }
        check(&s);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        check(&s);
    }
}

#[test]
fn fixtures_themselves() {
    for f in fixtures() {
        check(&f);
    }
}
