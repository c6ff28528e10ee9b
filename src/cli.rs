//! The command line: `run`, `dev`, `check-config`, `keygen`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A reverse proxy that serves Mosaic and nostr WebSocket clients on one endpoint.
#[derive(Debug, Parser)]
#[command(name = "mosaic-gateway", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway from a config file.
    Run {
        /// The YAML config file.
        #[arg(long, env = "MOSAIC_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Run a complete local stack (gateway, nostr relay, Mosaic backend) with no files.
    Dev {
        /// Plain WebSocket listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// TLS WebSocket listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: SocketAddr,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Validate a config file: exit 0 when valid, 1 with one line per problem.
    CheckConfig {
        /// The YAML config file.
        file: PathBuf,
    },
    /// Write a new ed25519 secret key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Why a command failed; `Display` is the one line printed before exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file is invalid (one line per problem).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    /// `tls.key_file` cannot be used (check-config).
    #[error("tls.key_file: {0}")]
    KeyFile(#[source] crate::keys::KeyError),
    /// A `tls.certificates` entry cannot be served (check-config).
    #[error(transparent)]
    Certificate(#[from] crate::tls::certs::CertError),
    /// keygen could not write the key.
    #[error(transparent)]
    Keygen(crate::keys::KeyError),
    /// The control runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The gateway did not start.
    #[error(transparent)]
    Start(#[from] crate::runtime::StartError),
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(#[source] std::io::Error),
    /// The dev stack did not start.
    #[error(transparent)]
    Dev(#[from] crate::dev::DevError),
}

/// Runs a command; the error text goes to stderr and the process exits 1.
pub fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Keygen { out } => {
            let public = crate::keys::keygen(&out).map_err(CliError::Keygen)?;
            println!("{public}");
            Ok(())
        }
        Command::Run { config } => runtime()?.block_on(run(config)),
        Command::Dev {
            listen,
            tls_listen,
            admin,
        } => Ok(runtime()?.block_on(crate::dev::run(crate::dev::DevOptions {
            listen,
            tls_listen,
            admin,
        }))?),
    }
}

/// The control runtime: signals, admin, health checks and discovery. Client traffic runs
/// on the worker threads `runtime::start` creates.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

fn check_config(file: &std::path::Path) -> Result<(), CliError> {
    let cfg = crate::config::load(file)?;
    if let Some(tls) = &cfg.tls {
        if let Some(key_file) = &tls.key_file {
            crate::keys::load_signing_key(key_file).map_err(CliError::KeyFile)?;
        }
        let (_, warnings) =
            crate::tls::certs::CertStore::load(crate::gateway::certificate_sources(tls))?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
    println!("{}: ok", file.display());
    Ok(())
}

async fn run(path: PathBuf) -> Result<(), CliError> {
    let config = crate::config::load(&path)?;
    crate::logging::init(config.log.format, &config.log.level);
    let running = crate::runtime::start(config, None).await?;
    let reason = crate::ops::shutdown::wait_for_stop(running.app.clone(), Some(path))
        .await
        .map_err(CliError::Signals)?;
    tracing::info!(?reason, "stopping");
    running.shutdown().await;
    Ok(())
}
