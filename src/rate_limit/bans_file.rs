//! `bans.file`: the bans and NIP-86 blocks kept across restarts.
//!
//! JSON, rewritten whole on each change by writing a temporary file beside it and renaming
//! it over the old one, so a crash leaves either the old bans or the new ones, never half.
//! A file that cannot be read at start is moved aside (`FILE.corrupt`) with a warning and
//! the gateway starts without those bans: refusing to start would turn a damaged list of
//! abusers into an outage for everyone.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::standing::Ban;

/// The file's shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    bans: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// An address or network, `203.0.113.7/32`, `2001:db8::/64`.
    net: IpNet,
    #[serde(flatten)]
    ban: Ban,
}

/// The bans in `path`; none when there is no file yet or it cannot be read (warned).
pub(crate) fn load(path: &Path) -> Vec<(IpNet, Ban)> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "bans.file: cannot read it; starting with no bans");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<File>(&text) {
        Ok(f) => f.bans.into_iter().map(|e| (e.net, e.ban)).collect(),
        Err(e) => {
            let aside = aside(path);
            let moved = std::fs::rename(path, &aside).is_ok();
            tracing::warn!(
                file = %path.display(),
                error = %e,
                moved_to = %if moved { aside.display().to_string() } else { String::new() },
                "bans.file: not a bans file; starting with no bans"
            );
            Vec::new()
        }
    }
}

fn aside(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".corrupt");
    PathBuf::from(p)
}

/// Writes `bans` to `path` atomically (a temporary file, synced, renamed over it).
pub(crate) fn save(path: &Path, bans: Vec<(IpNet, Ban)>) -> std::io::Result<()> {
    let mut bans: Vec<Entry> = bans
        .into_iter()
        .map(|(net, ban)| Entry { net, ban })
        .collect();
    bans.sort_by_key(|e| e.net);
    let text = serde_json::to_vec_pretty(&File { bans }).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_come_back_and_a_damaged_file_is_set_aside() {
        let dir = tempfile_dir();
        let path = dir.join("bans.json");
        assert!(load(&path).is_empty(), "no file yet: no bans");
        let bans = vec![
            (
                "203.0.113.7/32".parse().unwrap(),
                Ban {
                    until_ms: Some(42),
                    reason: "trips".into(),
                },
            ),
            (
                "2001:db8::/64".parse().unwrap(),
                Ban {
                    until_ms: None,
                    reason: "nip86".into(),
                },
            ),
        ];
        save(&path, bans.clone()).unwrap();
        let mut back = load(&path);
        back.sort_by_key(|(n, _)| *n);
        assert_eq!(back, bans);
        std::fs::write(&path, "{ not json").unwrap();
        assert!(load(&path).is_empty());
        assert!(!path.exists() && aside(&path).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("bans-file-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
