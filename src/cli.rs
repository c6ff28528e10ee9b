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
    #[error("tls.key_file")]
    KeyFile(#[source] crate::keys::KeyError),
    /// A `tls.certificates` entry cannot be served (check-config).
    #[error(transparent)]
    Certificate(#[from] crate::tls::certs::CertError),
    /// keygen could not write the key.
    #[error(transparent)]
    Keygen(crate::keys::KeyError),
    /// The control runtime could not start.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The gateway did not start.
    #[error(transparent)]
    Start(#[from] crate::runtime::StartError),
    /// Signal handlers could not be installed.
    #[error("cannot install the signal handlers")]
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

/// Every error type in `src/` that has a cause, checked here because this module may name
/// them all: a module below would import the ones above it.
#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;
    use std::path::PathBuf;

    /// Asserts that no level of `e`'s chain quotes the level under it.
    fn no_level_quotes_its_source(e: &dyn Error) {
        let mut level = Some(e);
        while let Some(l) = level {
            if let Some(cause) = l.source() {
                let (text, quoted) = (l.to_string(), cause.to_string());
                assert!(
                    !text.contains(&quoted),
                    "`{text}` repeats its source `{quoted}`"
                );
            }
            level = l.source();
        }
    }

    fn io(text: &str) -> io::Error {
        io::Error::other(text.to_string())
    }

    fn rustls_error() -> rustls::Error {
        rustls::Error::General("rustls refused it".into())
    }

    fn rcgen_error() -> rcgen::Error {
        rcgen::Error::KeyGenerationUnavailable
    }

    /// hyper makes its errors only itself: this one is a request to a peer that hung up.
    async fn hyper_error() -> hyper::Error {
        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let io = hyper_util::rt::TokioIo::new(client);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
        sender.send_request(req).await.unwrap_err()
    }

    /// Every error type in `src/` with a variant that has a cause, built with one.
    fn errors_with_a_cause() -> Vec<Box<dyn Error>> {
        use crate::keys::{ExposedKey, KeyAccess, KeyError, KeyStringError};
        use crate::tls::acme::AcmeError;
        use crate::tls::certs::{BadName, CertError};
        use crate::tls::{HandshakeError, TlsError};
        let path = PathBuf::from("/etc/gateway/key.pem");
        let exposed = || ExposedKey {
            path: path.clone(),
            problem: KeyAccess::TooOpen(0o644),
        };
        let key_unreadable = || KeyError::Unreadable(path.clone(), io("disk on fire"));
        let cert_read = || CertError::Read {
            key: "tls.certificates[0].cert_file".into(),
            path: path.clone(),
            source: io("disk on fire"),
        };
        let bind = || crate::runtime::StartError::Bind {
            key: "admin.listen",
            addr: ([127, 0, 0, 1], 9090).into(),
            source: io("address in use"),
        };
        vec![
            Box::new(super::CliError::KeyFile(key_unreadable())),
            Box::new(super::CliError::Runtime(io("no threads"))),
            Box::new(super::CliError::Signals(io("no signals"))),
            Box::new(super::CliError::Start(bind())),
            Box::new(crate::dev::DevError::Relay(io("port taken"))),
            Box::new(crate::dev::DevError::Backend(io("port taken"))),
            Box::new(crate::dev::DevError::Signals(io("no signals"))),
            Box::new(crate::BuildError::Key(key_unreadable())),
            Box::new(crate::BuildError::Tls(TlsError::ServerConfig(
                rustls_error(),
            ))),
            Box::new(crate::BuildError::Acme(AcmeError::ExposedKey(exposed()))),
            Box::new(crate::upstreams::health::CheckFailure::Upstream(
                crate::upstreams::connect::UpstreamError::Connect(io("refused")),
            )),
            Box::new(KeyStringError::Invalid {
                what: "server",
                source: Box::new(KeyStringError::Length(3)),
            }),
            Box::new(key_unreadable()),
            Box::new(KeyError::Write(path.clone(), io("read-only"))),
            Box::new(crate::runtime::StartError::Build(crate::BuildError::Key(
                key_unreadable(),
            ))),
            Box::new(bind()),
            Box::new(crate::runtime::StartError::Worker {
                worker: 1,
                source: io("no threads"),
            }),
            Box::new(cert_read()),
            Box::new(CertError::Name {
                key: "tls.certificates[0].names[0]".into(),
                source: BadName("a b".into()),
            }),
            Box::new(TlsError::EncodeKey(
                ed25519_dalek::pkcs8::Error::ParametersMalformed,
            )),
            Box::new(TlsError::CertificateKey(rcgen_error())),
            Box::new(TlsError::SelfSigned(rcgen_error())),
            Box::new(TlsError::LoadKey(rustls_error())),
            Box::new(TlsError::ClientConfig(rustls_error())),
            Box::new(TlsError::ClientCertificate(rustls_error())),
            Box::new(TlsError::Certificate(cert_read())),
            Box::new(HandshakeError::ClientHello(io("not TLS"))),
            Box::new(AcmeError::Cache {
                op: "read",
                path: path.clone(),
                source: io("disk on fire"),
            }),
            Box::new(AcmeError::Generate {
                what: "the account key",
                source: rcgen_error(),
            }),
        ]
    }

    #[tokio::test]
    async fn no_error_display_repeats_its_source() {
        let mut errors = errors_with_a_cause();
        errors.push(Box::new(crate::pipeline::body::BodyError::Client(
            hyper_error().await,
        )));
        for e in errors {
            assert!(e.source().is_some(), "{e:?} has no source");
            no_level_quotes_its_source(&*e);
        }
    }

    #[test]
    fn the_operator_still_reads_the_key_and_the_cause() {
        let e = crate::runtime::StartError::Bind {
            key: "admin.listen",
            addr: ([127, 0, 0, 1], 9090).into(),
            source: io("address in use"),
        };
        assert_eq!(
            crate::error::Chain(&e).to_string(),
            "admin.listen: cannot bind 127.0.0.1:9090: address in use"
        );
    }
}
