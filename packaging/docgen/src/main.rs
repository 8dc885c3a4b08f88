//! `vmnetd-docgen OUTDIR`: vmnetd's man pages and shell completions, generated from the
//! command line's clap definitions (`vmnetd::cli::Cli`), so they never drift from `--help`.
//!
//! - `OUTDIR/man1/`: one page per command and nested subcommand, named like git's
//!   (`vmnetd.1`, `vmnetd-port.1`, `vmnetd-port-add.1`, `vmnetd-network-lease-add.1`, ...;
//!   hidden subcommands and `help` are skipped), each with a SEE ALSO of its parent, its
//!   subcommands and its siblings;
//! - `OUTDIR/completions/`: `vmnetd.bash`, `_vmnetd` (zsh) and `vmnetd.fish`.
//!
//! `SOURCE_DATE_EPOCH`, when set, dates the pages (reproducible builds); otherwise they carry
//! no date. The libvirt hook (`vmnetd-libvirt-hook`) has no page: its clap definition lives
//! in its binary (`libvirt-hook/src/main.rs`), not in its library.
//!
//! packaging/build-deb.sh runs this into `target/packaging/gen` before `cargo deb`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};

const BIN: &str = "vmnetd";
const SECTION: &str = "1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: vmnetd-docgen OUTDIR  (writes OUTDIR/man1/*.1 and OUTDIR/completions/*)");
        return ExitCode::from(2);
    };
    if out.starts_with('-') {
        eprintln!("usage: vmnetd-docgen OUTDIR  (writes OUTDIR/man1/*.1 and OUTDIR/completions/*)");
        return ExitCode::from(if out == "-h" || out == "--help" { 0 } else { 2 });
    }
    match run(Path::new(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmnetd-docgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: &Path) -> Result<(), String> {
    let man_dir = out.join("man1");
    let pages = man_pages(&man_dir)?;
    let comp_dir = out.join("completions");
    let completions = completions(&comp_dir)?;
    println!("{} man pages in {}; completions: {}", pages.len(), man_dir.display(), completions.join(", "));
    Ok(())
}

/// A man page to write: the command, and the pages its SEE ALSO names.
struct Page {
    cmd: clap::Command,
    see_also: Vec<String>,
}

/// Writes every page; returns their paths.
fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, String> {
    create_dir(dir)?;
    // As clap_mangen::generate_to: no `help` pages; building sets every subcommand's display
    // name (`vmnetd-port-add`) and usage (`vmnetd port add`).
    let mut root = vmnetd::cli::Cli::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    collect(&root, None, &[], &mut pages);
    let date = date();
    let version = root.get_version().unwrap_or_default().to_owned();
    let mut written = Vec::new();
    for p in pages {
        let name = page_name(&p.cmd);
        let man = clap_mangen::Man::new(p.cmd)
            .title(name.to_uppercase())
            .section(SECTION)
            .date(date.clone())
            .source(format!("{BIN} {version}"))
            .manual("vmnetd Manual");
        let mut text = Vec::new();
        man.render(&mut text).map_err(|e| format!("cannot render {name}: {e}"))?;
        if !p.see_also.is_empty() {
            see_also(&p.see_also).to_writer(&mut text).map_err(|e| format!("cannot render {name}: {e}"))?;
        }
        let path = dir.join(format!("{name}.{SECTION}"));
        write(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

/// `vmnetd-port-add` for `vmnetd port add`.
fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_owned()
}

fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|c| !c.is_hide_set())
}

/// Depth first: `cmd`, then its visible subcommands. SEE ALSO: the parent, the subcommands,
/// then the siblings.
fn collect(cmd: &clap::Command, parent: Option<&str>, siblings: &[String], pages: &mut Vec<Page>) {
    let name = page_name(cmd);
    let children: Vec<String> = visible(cmd).map(page_name).collect();
    let mut see_also: Vec<String> = parent.map(str::to_owned).into_iter().collect();
    see_also.extend(children.iter().cloned());
    see_also.extend(siblings.iter().filter(|s| **s != name).cloned());
    pages.push(Page { cmd: cmd.clone(), see_also });
    for sub in visible(cmd) {
        collect(sub, Some(&name), &children, pages);
    }
}

fn see_also(names: &[String]) -> Roff {
    let mut inline = Vec::new();
    for (i, n) in names.iter().enumerate() {
        inline.push(bold(n.as_str()));
        inline.push(roman(if i + 1 == names.len() { format!("({SECTION})") } else { format!("({SECTION}), ") }));
    }
    let mut r = Roff::new();
    // .nh: no hyphenation inside page names ("vm-netd-port").
    r.control("SH", ["SEE ALSO"]).control("nh", []).text(inline);
    r
}

/// The pages' date: `SOURCE_DATE_EPOCH` as YYYY-MM-DD, else none.
fn date() -> String {
    let Some(secs) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<i64>().ok()) else {
        return String::new();
    };
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// bash, zsh and fish completions; returns the file names.
fn completions(dir: &Path) -> Result<Vec<String>, String> {
    create_dir(dir)?;
    let mut names = Vec::new();
    for (shell, file) in [(Shell::Bash, "vmnetd.bash"), (Shell::Zsh, "_vmnetd"), (Shell::Fish, "vmnetd.fish")] {
        let mut cmd = vmnetd::cli::Cli::command();
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut text);
        write(&dir.join(file), &text)?;
        names.push(file.to_owned());
    }
    Ok(names)
}

fn create_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn page_names_follow_git() {
        let mut root = vmnetd::cli::Cli::command().disable_help_subcommand(true);
        root.build();
        let mut pages = Vec::new();
        collect(&root, None, &[], &mut pages);
        let names: Vec<String> = pages.iter().map(|p| page_name(&p.cmd)).collect();
        for n in ["vmnetd", "vmnetd-port", "vmnetd-port-add", "vmnetd-network-lease-add"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(!names.iter().any(|x| x.ends_with("-help")), "{names:?}");
        let add = pages.iter().find(|p| page_name(&p.cmd) == "vmnetd-port-add").unwrap();
        assert_eq!(add.see_also[0], "vmnetd-port");
        assert!(add.see_also.iter().any(|s| s == "vmnetd-port-del"), "{:?}", add.see_also);
    }
}
