//! `vmnetd top`: a live view of a running daemon (placeholder).

use std::path::Path;
use std::time::Duration;

/// Runs the live view against the daemon at `socket` until the user quits.
pub fn run(_socket: &Path, _interval: Duration) -> anyhow::Result<()> {
    anyhow::bail!("vmnetd top is not built yet")
}
