//! Refusing work that cannot fit in memory before anything is allocated: lower bounds on what a
//! shape needs ([`crate::config::ModelConfig::training_bytes`], `forward_bytes`) against what the
//! machine has free. An allocation that fails aborts the process without an error message, so
//! this is the only place such a mistake can be reported well.

use anyhow::Result;

use crate::error::UsageError;

/// Bytes of memory the kernel reports as available (`MemAvailable` in /proc/meminfo); `None`
/// where that is not known (not Linux), in which case nothing is refused.
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
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
