//! Refusing work that cannot fit in memory before anything is allocated: lower bounds on what a
//! shape needs ([`crate::config::ModelConfig::training_bytes`], `forward_bytes`) against what the
//! machine has free. An allocation that fails aborts the process without an error message, so
//! this is the only place such a mistake can be reported well.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::Device;

use crate::config::ModelConfig;
use crate::error::UsageError;

/// Bytes of memory this process can still use: what the kernel reports as available
/// (`MemAvailable` in /proc/meminfo), or less where the memory cgroup this process runs in (v2
/// or v1, or one above it) leaves less headroom under its limit. `None` where neither is known
/// (not Linux), in which case nothing is refused.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|own| cgroup_headroom(&own, Path::new("/sys/fs/cgroup")));
    match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// The files one cgroup version keeps its memory accounting in.
struct Accounting {
    /// Where the hierarchy is mounted, below the cgroup file system's root.
    mount: &'static str,
    limit: &'static str,
    usage: &'static str,
    /// The `memory.stat` key of the page cache the kernel can drop under pressure: counted in
    /// the usage, but not memory a new allocation has to do without.
    reclaimable: &'static str,
}

const V2: Accounting = Accounting { mount: "", limit: "memory.max", usage: "memory.current", reclaimable: "inactive_file" };
const V1: Accounting = Accounting { mount: "memory", limit: "memory.limit_in_bytes", usage: "memory.usage_in_bytes", reclaimable: "total_inactive_file" };

/// The least headroom under a memory limit along this process's cgroup and its ancestors, given
/// the contents of `/proc/self/cgroup` and the root the cgroup file systems are mounted under
/// (`/sys/fs/cgroup`). Usage counts without its reclaimable page cache (the working set), so a
/// container that has just read large files is not taken to be full. `None` where no level has a
/// limit (`max` in v2, a value near 2^63 in v1) or the files cannot be read.
pub fn cgroup_headroom(proc_self_cgroup: &str, root: &Path) -> Option<u64> {
    proc_self_cgroup
        .lines()
        .filter_map(|line| {
            // hierarchy-id:controllers:path; v2's controller list is empty.
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let acc = if controllers.is_empty() {
                &V2
            } else if controllers.split(',').any(|c| c == "memory") {
                &V1
            } else {
                return None;
            };
            headroom_along(&root.join(acc.mount), path, acc)
        })
        .min()
}

/// The least headroom from the cgroup at `path` up to the hierarchy's top. Inside a cgroup
/// namespace the listed path may not exist under the mount, whose top is then the process's own.
fn headroom_along(mount: &Path, path: &str, acc: &Accounting) -> Option<u64> {
    let own = mount.join(path.trim_start_matches('/'));
    let mut dir: PathBuf = if own.is_dir() { own } else { mount.to_path_buf() };
    let mut least: Option<u64> = None;
    loop {
        if let Some(h) = level_headroom(&dir, acc) {
            least = Some(least.map_or(h, |l| l.min(h)));
        }
        if dir.as_path() == mount || !dir.pop() {
            return least;
        }
    }
}

fn level_headroom(dir: &Path, acc: &Accounting) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let limit: u64 = read(acc.limit)?.trim().parse().ok().filter(|&l| l < 1 << 60)?;
    let usage: u64 = read(acc.usage)?.trim().parse().ok()?;
    let reclaimable = read("memory.stat")
        .and_then(|stat| {
            stat.lines().find_map(|l| match l.split_once(' ') {
                Some((key, value)) if key == acc.reclaimable => value.trim().parse::<u64>().ok(),
                _ => None,
            })
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(reclaimable)))
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

/// [`ensure_fits`] for work that runs on `dev`: host memory is checked only for the CPU, since an
/// accelerator's allocator reports its own failures as errors.
pub fn ensure_fits_on(dev: &Device, what: &str, need: u64, hint: &str) -> Result<()> {
    if dev.is_cpu() {
        ensure_fits(what, need, hint)
    } else {
        Ok(())
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A usage error when a training step of this shape at `batch` windows of `model.context`
/// tokens, with `state_copies` parameter-sized optimizer tensors, cannot fit in the memory of
/// `dev`'s host; `hint` names the flags that make it smaller.
pub fn ensure_training_fits(dev: &Device, model: &ModelConfig, batch: usize, state_copies: u64, hint: &str) -> Result<()> {
    ensure_fits_on(
        dev,
        &format!("training {} layers x {} wide at batch {batch} x context {}", model.n_layer, model.d_model, model.context),
        model.training_bytes(batch, state_copies),
        hint,
    )
}

pub const SHAPE_HINT: &str = "lower --batch-size, --context, --d-model or --layers";
