//! Refusing work that cannot fit in memory before anything is allocated: lower bounds on what a
//! shape needs ([`crate::config::ModelConfig::training_bytes`], `forward_bytes`) against what the
//! machine has free. An allocation that fails aborts the process without an error message, so
//! this is the only place such a mistake can be reported well.

use anyhow::Result;

use crate::error::UsageError;

/// Bytes of memory this process can still use: what the kernel reports as available
/// (`MemAvailable` in /proc/meminfo), or less where a container's memory cgroup (v2 or v1)
/// leaves less headroom under its limit. `None` where neither is known (not Linux), in which
/// case nothing is refused.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    });
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroup = [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ]
    .iter()
    .find_map(|(limit, usage)| cgroup_headroom(&read(limit)?, &read(usage)?));
    match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// Headroom under a memory cgroup's limit, from the contents of its limit and usage files;
/// `None` when there is no limit (`max` in v2, a value near 2^63 in v1) or the files do not parse.
pub fn cgroup_headroom(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok().filter(|&l| l < 1 << 60)?;
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

/// A usage error when `need` bytes (a lower bound) exceed the memory available. `what` says
/// what needs it and `hint` which flags make it smaller.
pub fn ensure_fits(what: &str, need: u64, hint: &str) -> Result<()> {
    match available_bytes() {
        Some(free) if need > free => Err(UsageError(format!(
            "{what} needs at least {} of memory, but only {} is available; {hint}",
            gib(need),
            gib(free)
        ))
        .into()),
        _ => Ok(()),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
