//! The mosaic-gateway binary: parse the command line and run it.

use clap::Parser;

fn main() {
    let cli = mosaic_gateway::cli::Cli::parse();
    if let Err(e) = mosaic_gateway::cli::execute(cli) {
        eprintln!("mosaic-gateway: {e}");
        std::process::exit(1);
    }
}
