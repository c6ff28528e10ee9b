//! Puts the table of standing into effect on what is already running: closes the open
//! connections of addresses refused since they connected (a reload that denies them, a new
//! ban, a NIP-86 block), forgets bans that ended, and keeps `bans.file` current.
//!
//! One task on the control runtime. A change wakes it at once, so an open connection hears
//! 1008 well within a second of the decision; writing the file happens off the event loop.

use std::sync::Arc;
use std::time::Duration;

use crate::gateway::App;

/// How often ended bans are forgotten and the file rewritten if they changed.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Runs until the process ends.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The table is fetched on each turn: a reload may carry it into a new generation.
        let standing = app.standing();
        tokio::select! {
            () = standing.changed() => {
                let closed = app.close_refused();
                if closed > 0 {
                    tracing::info!(closed, "closed the connections of addresses refused now");
                }
            }
            _ = tick.tick() => {
                standing.expire();
            }
        }
        if let Some((path, bans)) = standing.to_save() {
            let written = tokio::task::spawn_blocking(move || {
                (crate::rate_limit::save_bans(&path, bans), path)
            })
            .await;
            if let Ok((Err(e), path)) = written {
                standing.save_failed(&path, &e);
            }
        }
    }
}
