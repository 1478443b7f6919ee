//! herald's command line: plain `herald` serves (every setting a flag or an
//! environment variable, see `herald::Config`); subcommands are tools around
//! a running deployment, each in a module of its own:
//! - `token`: mint a JWT for testing and scripts.
//! - `tail`, `publish`, `check`: watch a session, publish to it, and probe
//!   an instance's readiness, against a running herald (`http`: what they
//!   share; `socketio`: the client `tail` speaks).

mod check;
mod http;
mod publish;
mod serve;
mod socketio;
mod tail;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::Config;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Socket.IO-compatible realtime event server",
    // `herald --port 4000 token ...` would ignore the port: say so instead.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The server's settings, when no subcommand is given.
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (what plain `herald` does).
    Serve(Box<Config>),
    /// Print a token (JWT) signed with JWT_SECRET, the first secret of
    /// JWT_SECRET_FILE, or a private key, for testing and scripts.
    Token(token::Args),
    /// Watch a session's events, one line each, resuming after reconnects.
    Tail(tail::Args),
    /// Publish a session event (or, with --batch, lines of items from stdin)
    /// through the HTTP API; prints the seq.
    Publish(publish::Args),
    /// Probe instances' health, readiness and version; exit 0 when all are
    /// ready, 1 when one is not, 3 when one is unreachable.
    Check(check::Args),
}

/// Runs what the command line asks for.
pub(crate) fn run(dotenv: Result<std::path::PathBuf, dotenvy::Error>) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve::run(cli.serve, dotenv),
        Some(Command::Serve(config)) => serve::run(*config, dotenv),
        Some(Command::Token(args)) => token::run(&args),
        Some(Command::Tail(args)) => tail::run(&args).into(),
        Some(Command::Publish(args)) => publish::run(&args).into(),
        Some(Command::Check(args)) => check::run(&args).into(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plain_herald_serves_with_its_flags() {
        let cli = Cli::parse_from(["herald", "--port", "0", "--host", "::1"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen_on(), ("::1", 0));
        let cli = Cli::parse_from(["herald", "serve", "--port", "5"]);
        assert!(matches!(cli.command, Some(Command::Serve(c)) if c.port == 5));
    }

    #[test]
    fn server_flags_do_not_mix_with_a_subcommand() {
        let mixed = Cli::try_parse_from(["herald", "--port", "1", "token", "--sessions", "a"]);
        assert!(mixed.is_err());
    }
}
