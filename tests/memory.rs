//! The memory headroom that refusals are measured against: a container's memory cgroup, found
//! through /proc/self/cgroup, on fake cgroup trees.

use std::fs;
use std::path::Path;

use thermoformer::memory::{available_bytes, cgroup_headroom};

const GIB: u64 = 1 << 30;

/// Write a cgroup level's files: (file name, contents) pairs under `root/dir`.
fn level(root: &Path, dir: &str, files: &[(&str, String)]) {
    let d = root.join(dir);
    fs::create_dir_all(&d).unwrap();
    for (name, text) in files {
        fs::write(d.join(name), text).unwrap();
    }
}

#[test]
fn v2_takes_the_tightest_limit_from_the_own_cgroup_up() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    level(r, "", &[("cgroup.controllers", "memory\n".into())]); // the top has no memory.max
    // A parent with an 8 GiB limit, 3 GiB used of which 1 GiB is droppable page cache.
    level(r, "a", &[("memory.max", format!("{}\n", 8 * GIB)), ("memory.current", format!("{}\n", 3 * GIB)), ("memory.stat", format!("anon 123\ninactive_file {}\nactive_file 5\n", GIB))]);
    // The process's own cgroup sets no limit of its own.
    level(r, "a/b", &[("memory.max", "max\n".into()), ("memory.current", format!("{}\n", 2 * GIB))]);
    assert_eq!(cgroup_headroom("0::/a/b\n", r), Some(6 * GIB), "the parent's limit, usage net of reclaimable cache");

    // Now the own cgroup is tighter: 4 GiB with 3 GiB used.
    level(r, "a/b", &[("memory.max", format!("{}\n", 4 * GIB)), ("memory.current", format!("{}\n", 3 * GIB))]);
    assert_eq!(cgroup_headroom("0::/a/b\n", r), Some(GIB));
    // Over the limit: no headroom, not an underflow.
    level(r, "a/b", &[("memory.max", "1000\n".into()), ("memory.current", "2000\n".into())]);
    assert_eq!(cgroup_headroom("0::/a/b\n", r), Some(0));
}

#[test]
fn v1_reads_the_memory_hierarchy_and_ignores_other_controllers() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let unlimited = "9223372036854771712\n".to_string();
    level(r, "memory", &[("memory.limit_in_bytes", unlimited.clone()), ("memory.usage_in_bytes", format!("{}\n", 20 * GIB))]);
    level(r, "memory/job", &[("memory.limit_in_bytes", format!("{}\n", 2 * GIB)), ("memory.usage_in_bytes", format!("{}\n", 5 * GIB / 2)), ("memory.stat", format!("cache 9\ninactive_file 1\ntotal_inactive_file {GIB}\n"))]);
    // A cpu hierarchy with a memory-looking file must not be read as memory.
    level(r, "cpu,cpuacct/job", &[("memory.limit_in_bytes", "1\n".into()), ("memory.usage_in_bytes", "1\n".into())]);
    let own = "5:cpu,cpuacct:/job\n4:memory:/job\n0::/\n";
    assert_eq!(cgroup_headroom(own, r), Some(GIB / 2), "2 GiB limit, 2.5 GiB used of which 1 GiB is reclaimable");

    level(r, "memory/job", &[("memory.limit_in_bytes", unlimited)]);
    assert_eq!(cgroup_headroom(own, r), None, "no limit at any level");
    assert_eq!(cgroup_headroom("", r), None);
    assert_eq!(cgroup_headroom("not a cgroup line\n", r), None);
}

#[test]
fn inside_a_cgroup_namespace_the_mount_top_is_the_own_cgroup() {
    // With a namespace the listed path is relative to a top that the mount already is.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    level(r, "", &[("memory.max", format!("{}\n", GIB)), ("memory.current", format!("{}\n", GIB / 4))]);
    assert_eq!(cgroup_headroom("0::/\n", r), Some(3 * GIB / 4));
    assert_eq!(cgroup_headroom("0::/kubepods/pod1/ctr\n", r), Some(3 * GIB / 4), "a path not visible here falls back to the top");
}

#[test]
fn linux_reports_available_memory() {
    assert!(available_bytes().is_some());
}
