//! Declares a persistent TAP owned by a user through a running daemon, then lists TAPs.
//!
//! `cargo run -p vmnetd-examples --example persistent_tap -- nobody`

use anyhow::Context;
use vmnetd::api::{Op, TapInfo, TapSpec, DEFAULT_SOCKET};
use vmnetd::client::Client;

fn main() -> anyhow::Result<()> {
    let user = std::env::args().nth(1).unwrap_or_else(|| "nobody".into());
    let socket = std::env::var("VMNETD_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.into());
    let mut client = Client::connect(socket.as_ref()).context("is `vmnetd daemon` running?")?;
    let tap: TapInfo = client.call(Op::Mktap(TapSpec { user: Some(user), vnet_hdr: true, ..Default::default() }))?;
    println!("created {} owned by {:?}", tap.name, tap.owner);
    let all: Vec<TapInfo> = client.call(Op::TapList)?;
    for t in all {
        println!("{} present={} created={}", t.name, t.present, t.created);
    }
    Ok(())
}
