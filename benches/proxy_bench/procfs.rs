//! What /proc says: the CPU time and RSS of a proxy's processes, and how busy the machine is.

use std::time::Duration;

/// CPU time (ns) used so far by every thread of `pids` (from /proc/PID/task/TID/schedstat).
pub fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `pid` and its descendants (nginx workers).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                    if let Some(pp) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                        parents.push((p, pp));
                    }
                }
            }
        }
    }
    while i < all.len() {
        let cur = all[i];
        for &(p, pp) in &parents {
            if pp == cur && !all.contains(&p) {
                all.push(p);
            }
        }
        i += 1;
    }
    all
}

/// RSS (KiB) of `pid` and its descendants.
pub fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid).into_iter().filter_map(rss_kib).sum()
}

/// Share of all CPUs busy (not idle or iowait) over `window`, from /proc/stat.
pub fn cpu_busy_fraction(window: Duration) -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Some((total, idle))
    }
    let Some((t0, i0)) = sample() else {
        return 0.0;
    };
    std::thread::sleep(window);
    let Some((t1, i1)) = sample() else {
        return 0.0;
    };
    let dt = (t1 - t0).max(1) as f64;
    1.0 - (i1 - i0) as f64 / dt
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
