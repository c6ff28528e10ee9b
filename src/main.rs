//! The mosaic-gateway binary: parse the command line and run it.

use clap::Parser;

/// mimalloc rather than glibc's malloc: the relay allocates a 16 KiB read buffer when data
/// starts to flow and frees it when the socket runs dry, and glibc spent 3.5 % of the CPU
/// on that churn (malloc_consolidate); paired benchmark runs used 1-12 % less CPU per message.
/// Built without transparent huge pages (`no_thp`): the gateway's heap is small and grows a
/// connection at a time, and with them RSS grew in 2 MiB steps (AnonHugePages 10 → 20 MiB
/// for 5,000 idle connections) and a fresh gateway started 8.8 MB larger.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    mosaic_gateway::runtime::set_memory_upkeep(collect_freed_memory);
    let cli = mosaic_gateway::cli::Cli::parse();
    if let Err(e) = mosaic_gateway::cli::execute(cli) {
        eprintln!("mosaic-gateway: {}", mosaic_gateway::error::Chain(&e));
        std::process::exit(1);
    }
}

/// mimalloc's collect, not forced: gives back the pages this thread emptied and purges those
/// whose purge delay has passed; a walk over the thread's pages when nothing changed. Each
/// event loop calls it once a second (`runtime::set_memory_upkeep` says why).
fn collect_freed_memory() {
    // SAFETY: mi_collect has no preconditions; it works on the calling thread's heap and the
    // shared arenas under mimalloc's own synchronisation.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
