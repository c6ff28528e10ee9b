//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and crash reproducers
//! (`fuzz/regressions/<target>/`) through the same target bodies the libFuzzer binaries
//! run, so the ordinary `cargo test` on stable keeps every input that once found new
//! coverage or a bug green, without cargo-fuzz or libFuzzer.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::Path;

/// At most this many inputs per target and folder (hand-made `seed-*` first), so the
/// replay stays within seconds.
const MAX_INPUTS: usize = 1000;

fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut total = 0;
    for folder in ["corpus", "regressions"] {
        let dir = root.join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort_by_key(|p| {
            let seed = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
            (!seed, p.clone())
        });
        for path in files.into_iter().take(MAX_INPUTS) {
            let data = std::fs::read(&path).expect("corpus file readable");
            let outcome = std::panic::catch_unwind(|| targets::run(target, &data));
            match outcome {
                Ok(known) => assert!(known, "unknown target {target}"),
                Err(_) => panic!("{target}: input {} fails", path.display()),
            }
            total += 1;
        }
    }
    assert!(total > 0, "no corpus for {target} under {}", root.display());
}

#[test]
fn every_target_has_a_corpus() {
    for t in targets::TARGETS {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(t)
                .is_dir(),
            "fuzz/corpus/{t} missing"
        );
    }
}

#[test]
fn upgrade_route() {
    replay("upgrade_route");
}

#[test]
fn request_rules() {
    replay("request_rules");
}

#[test]
fn features() {
    replay("features");
}

#[test]
fn frame_tracker() {
    replay("frame_tracker");
}

#[test]
fn tracker_2025() {
    replay("tracker_2025");
}

#[test]
fn mosaic_head() {
    replay("mosaic_head");
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol");
}

#[test]
fn config_parse() {
    replay("config_parse");
}
