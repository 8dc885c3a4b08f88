//! `vmnetd`: the daemon and its command line.

use clap::Parser;
use vmnetd::cli::{self, Cli, Command};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other failure: clap's message without "error: ", the
            // usage and help hints, with a list ("...not provided:\n  --trunk <VIDS>")
            // folded into the line.
            let text = e.render().to_string();
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            let first = lines.next().unwrap_or("invalid command line");
            let mut msg = first.strip_prefix("error: ").unwrap_or(first).to_owned();
            if msg.ends_with(':') {
                let items: Vec<&str> = lines.take_while(|l| l.starts_with(' ')).map(str::trim).collect();
                msg = format!("{} {}", msg, items.join(", "));
            }
            eprintln!("vmnetd: {msg}");
            std::process::exit(2);
        }
    };
    let json = cli.json;
    if let Command::Daemon(args) = &cli.command {
        if args.print_default_config {
            print!("{}", vmnetd::config::EMBEDDED_DEFAULT);
            return;
        }
        vmnetd::daemon::init_logging();
        vmnetd::daemon::fail_stop();
        let opts = vmnetd::daemon::Options {
            config: args.config.clone(),
            state_dir: args.state_dir.clone(),
            run_dir: args.run_dir.clone(),
            socket: cli.socket.clone(),
        };
        if let Err(e) = vmnetd::daemon::run(opts) {
            eprintln!("vmnetd: {}", vmnetd::api::error_chain(&e));
            std::process::exit(1);
        }
        return;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(f) = cli::run(cli) {
        eprintln!("vmnetd: {}", f.message);
        if json {
            println!("{}", serde_json::json!({"error": {"kind": f.kind, "message": f.message}}));
        }
        std::process::exit(f.exit_code());
    }
}
