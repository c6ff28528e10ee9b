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

/// Runs a command; the error text goes to stderr and the process exits 1.
pub fn execute(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Keygen { out } => {
            let public = crate::keys::keygen(&out).map_err(|e| e.to_string())?;
            println!("{public}");
            Ok(())
        }
        Command::Run { config } => runtime()?.block_on(run(config)),
        Command::Dev {
            listen,
            tls_listen,
            admin,
        } => runtime()?.block_on(crate::dev::run(crate::dev::DevOptions {
            listen,
            tls_listen,
            admin,
        })),
    }
}

/// The control runtime: signals, admin, health checks and discovery. Client traffic runs
/// on the worker threads `runtime::start` creates.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn check_config(file: &std::path::Path) -> Result<(), String> {
    let cfg = crate::config::load(file).map_err(|e| e.to_string())?;
    if let Some(tls) = &cfg.tls {
        crate::keys::load_signing_key(&tls.key_file).map_err(|e| format!("tls.key_file: {e}"))?;
    }
    println!("{}: ok", file.display());
    Ok(())
}

async fn run(path: PathBuf) -> Result<(), String> {
    let config = crate::config::load(&path).map_err(|e| e.to_string())?;
    crate::logging::init(config.log.format, &config.log.level);
    let running = crate::runtime::start(config, None).await?;
    let reason = crate::shutdown::wait_for_stop(running.app.clone(), Some(path))
        .await
        .map_err(|e| format!("signals: {e}"))?;
    tracing::info!(?reason, "stopping");
    running.shutdown().await;
    Ok(())
}
