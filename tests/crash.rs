//! Faults: SIGKILL at random moments (many of them inside checkpoint writes), saves interrupted at
//! each stage of the commit, and divergence. After every one the run directory holds a checkpoint
//! that loads and scores, and `--resume` carries on.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thermoformer::checkpoint::{self, Stage};

/// The tiny run, `steps` long, checkpointing at every step (later flags override earlier ones).
fn train_args<'a>(corpus: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let mut args = common::tiny_train_flags(corpus, out);
    args.extend(["--steps", steps, "--eval-every", "1", "--eval-batches", "1"]);
    args
}

fn spawn(args: &[&str]) -> Child {
    common::thermoformer().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("starting thermoformer")
}

/// The run directory holds a whole checkpoint: it scores, and it loads for resuming. Its step.
fn assert_usable(dir: &Path, what: &str) -> usize {
    let o = common::run(&["score", "--text", "First Citizen", "--checkpoint", dir.to_str().unwrap(), "--format", "jsonl"]);
    assert!(o.status.success(), "{what}: score failed: {}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(e["energy"].as_f64().unwrap().is_finite());
    checkpoint::load_resumable(dir, &Device::Cpu).unwrap_or_else(|e| panic!("{what}: {e:#}")).state.step
}

fn leftovers(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        name.ends_with(".tmp") || name == ".commit"
    })
}

#[test]
fn sigkill_at_random_moments_never_loses_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 6000);
    let out = tmp.path().join("run");
    let (corpus_s, out_s) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    // A run that never finishes by itself, checkpointing at every step.
    let mut child = spawn(&train_args(corpus_s, out_s, "1000000"));
    let start = Instant::now();
    while !out.join("state.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no first checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let (mut kills, mut mid_write, mut last_step) = (0, 0, 0);
    let resume: Vec<&str> = train_args(corpus_s, out_s, "1000000").into_iter().chain(["--resume"]).collect();
    for k in 0..24 {
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("kill {k}: the run ended by itself ({status}): {err}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if leftovers(&out) {
            mid_write += 1;
        }
        let step = assert_usable(&out, &format!("after kill {k}"));
        assert!(step >= last_step, "kill {k}: the checkpoint went back from step {last_step} to {step}");
        last_step = step;
        child = spawn(&resume);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // And a last resume runs to its end cleanly.
    let target = (assert_usable(&out, "before the final resume") + 2).to_string();
    let mut finish = train_args(corpus_s, out_s, "1000000");
    finish.extend(["--resume", "--stop-after", &target]);
    let o = common::run(&finish);
    assert!(o.status.success(), "final resume: {}", String::from_utf8_lossy(&o.stderr));
    println!("all {kills} SIGKILLs survived; {mid_write} landed inside a checkpoint write; last step {last_step}");
    assert!(last_step > 0, "training made progress between kills");
    // The point of the test: kills inside a write (a tiny run spends most of its time in them).
    assert!(mid_write * 4 >= kills, "only {mid_write} of {kills} kills landed inside a checkpoint write");
}

#[test]
fn a_crash_at_every_stage_of_a_commit_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 6000);
    for (stage, committed) in [(Stage::TmpWritten, false), (Stage::Committed, true), (Stage::Renaming, true)] {
        let out = tmp.path().join(format!("{stage:?}"));
        let (corpus_s, out_s) = (corpus.to_str().unwrap(), out.to_str().unwrap());
        let mut first = train_args(corpus_s, out_s, "10");
        first.extend(["--stop-after", "2"]);
        assert!(common::run(&first).status.success());
        // The save of step 3, stopped at `stage` as a kill there would stop it.
        let saved = checkpoint::load_resumable(&out, &Device::Cpu).unwrap();
        let state = checkpoint::TrainState { step: 3, ..saved.state.clone() };
        checkpoint::save_interrupted(&out, &saved.config, &saved.tokenizer, &saved.params, saved.optimizer_state.clone(), &state, stage).unwrap();
        assert!(leftovers(&out), "{stage:?}: the crash left a commit in progress");
        let step = assert_usable(&out, &format!("{stage:?}"));
        assert_eq!(step, if committed { 3 } else { 2 }, "{stage:?}: a committed save survives, an uncommitted one is dropped");
        let mut resume = train_args(corpus_s, out_s, "10");
        resume.push("--resume");
        let o = common::run(&resume);
        assert!(o.status.success(), "{stage:?}: resume after the crash: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(assert_usable(&out, &format!("{stage:?}")), 10);
        assert!(!leftovers(&out));
    }
}

#[test]
fn divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 6000);
    let out = tmp.path().join("run");
    let mut args = train_args(corpus.to_str().unwrap(), out.to_str().unwrap(), "20");
    args.extend(["--lr", "1e30", "--warmup", "0", "--eval-every", "5"]);
    let o = common::run(&args);
    common::assert_clean_error(&o, 1, "training diverged at step");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("NaN") || stderr.contains("inf"), "the cause is named: {stderr}");
    assert_eq!(assert_usable(&out, "after divergence"), 0, "the step-0 checkpoint is intact");
}

/// Bytes `dir`'s files take on a filesystem of 4 KiB pages.
fn pages(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len().div_ceil(4096) * 4096).sum()
}

#[test]
fn a_full_disk_mid_save_keeps_the_previous_checkpoint_and_says_so() {
    // Where root can mount a tmpfs, the run moves onto one with room for its files and a little
    // more, so that the next save's temporary files fill it: a real ENOSPC. Elsewhere, writing the
    // optimizer's temporary file is made to fail as a full disk would.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(tmp.path(), 4000);
    let run = tmp.path().join("run");
    let (c, r) = (corpus.to_str().unwrap(), run.to_str().unwrap());
    let o = common::run(&train_args(c, r, "2"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mnt = tmp.path().join("small-disk");
    std::fs::create_dir(&mnt).unwrap();
    let room = pages(&run) + std::fs::metadata(run.join("model.safetensors")).unwrap().len().div_ceil(4096) * 4096 + 8192;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={room}"), "tmpfs", mnt.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let dir = if mounted {
        let dir = mnt.join("run");
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&run).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    } else {
        println!("no tmpfs could be mounted here (not root, or no permission): injecting ENOSPC instead");
        run.clone()
    };
    let d = dir.to_str().unwrap().to_string();
    let mut args = train_args(c, &d, "4");
    args.push("--resume");
    let mut cmd = common::thermoformer();
    if !mounted {
        cmd.env(checkpoint::INJECT_ENOSPC, "optimizer.safetensors.tmp");
    }
    let failed = cmd.args(&args).output().unwrap();
    let (code, stderr) = common::status_and_stderr(&failed);
    println!("{}", stderr.trim());
    assert_eq!(code, 1, "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error")).unwrap_or_default();
    assert!(line.contains("saving the checkpoint of step 3") && line.contains("the previous checkpoint there is kept") && line.contains("No space left on device"), "{line}");
    // The previous checkpoint loads, scores and resumes; the failed save left nothing behind.
    assert_eq!(assert_usable(&dir, "after ENOSPC"), 2);
    assert!(!leftovers(&dir), "the failed save's temporary files are removed");
    let resume_in = if mounted {
        let copy = tmp.path().join("copied");
        std::fs::create_dir(&copy).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        copy
    } else {
        dir.clone()
    };
    let d = resume_in.to_str().unwrap().to_string();
    let mut args = train_args(c, &d, "4");
    args.push("--resume");
    let o = common::run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(assert_usable(&resume_in, "resumed"), 4);
}
