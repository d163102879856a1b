//! The `dialtone` program: `dialtone serve` runs a node; every other
//! subcommand is a gRPC client of a running node.
//!
//! # What it owns
//! - Configuration ([`config`]: defaults < TOML file < `DIALTONE_*`
//!   variables < flags), the only place where settings and listening
//!   addresses are read.
//! - The wiring of a node ([`server`]): event log, actor system, projections,
//!   SIP gateway, gRPC API, Prometheus metrics exporter, and shutdown in
//!   order; the admin token ([`admin_token`]: configured, or made once into
//!   `<data-dir>/admin.token`).
//! - [`sip_bridge`]: the SIP gateway's `SipBackend` implemented over the
//!   actors (credentials, REGISTER as user commands, call routing, call
//!   steps recorded in both users' streams, lock-outs as domain events).
//! - [`blob_sweeper`]: deletes voicemail audio no mailbox names (orphans of
//!   a crash between a put and its event, or of a failed delete) once it
//!   is older than a grace period.
//! - The CLI client ([`cli`], one module per command group) and the demo
//!   provisioning ([`demo`]).
//!
//! # Main types
//! [`main`] is the whole program; the binary's `main` only calls it, so
//! that the black-box tests can build the same program under another name.
//! Errors here are `anyhow` (this is the binary), reported once by [`main`].
//!
//! # What it must not do
//! No business rules and no protobuf definitions of its own: it wires the
//! other crates and calls the API's generated client.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin_token;
pub mod blob_sweeper;
pub mod cli;
pub mod conference;
pub mod config;
pub mod demo;
pub mod server;
pub mod sip_bridge;
pub mod voicemail;

use clap::{Parser, Subcommand};

/// Dialtone: an event-sourced SIP telephony backend.
#[derive(Parser, Debug)]
#[command(name = "dialtone", version, about, long_about = None)]
struct Args {
    /// gRPC address of the node (client commands).
    #[arg(
        long,
        global = true,
        env = "DIALTONE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Print JSON instead of human-readable text (client commands).
    #[arg(long, global = true)]
    json: bool,
    /// API token (client commands): the node's admin token (in
    /// <data-dir>/admin.token) or one from `dialtone token create`.
    #[arg(long, global = true, env = "DIALTONE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to verify an https:// server with, e.g. its own
    /// self-signed certificate [default: the system's roots].
    #[arg(long, global = true, env = "DIALTONE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: event log, actors, gRPC API, metrics.
    Serve {
        // Boxed: the settings are many times larger than any client command.
        #[command(flatten)]
        overrides: Box<config::Overrides>,
        /// Provision a demo domain with two users and print their credentials.
        #[arg(long)]
        demo: bool,
    },
    // Boxed: some client commands have many options.
    #[command(flatten)]
    Client(Box<cli::ClientCommand>),
}

/// The whole program: parses the command line and runs it.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        Command::Serve { overrides, demo } => {
            init_tracing();
            config::Config::resolve(&overrides)
                .and_then(|config| runtime.block_on(server::run(config, demo)))
        }
        Command::Client(command) => {
            let target = cli::Target {
                server: args.server,
                token: args.token,
                ca_cert: args.ca_cert,
            };
            runtime.block_on(cli::run(&target, args.json, *command))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIALTONE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log that cannot be written (stderr on a full disk) must not
        // take the node down: by default the subscriber reports such errors
        // with `eprintln!`, which panics when stderr fails, killing the
        // thread that logged (the event-log writer, an actor arbiter).
        .log_internal_errors(false)
        .init();
}
