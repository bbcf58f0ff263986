//! What a long command tells the person watching: one-line notes on stderr and a progress bar.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Write one line of progress or warning to stderr. Unlike `eprintln!`, which panics when the
/// reader has gone away (`thermoformer train 2>&1 | head -1`), a failed write is ignored: the
/// work goes on and its files are still written.
pub fn note(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A progress bar over `total` steps, `done` of them already behind it, on stderr (indicatif
/// hides it when stderr is not a terminal; `visible: false` hides it anyway).
pub fn bar(total: usize, done: usize, visible: bool) -> ProgressBar {
    let pb = styled(total as u64, "{bar:30.cyan/blue} {pos:>5}/{len} [{elapsed_precise}<{eta_precise}] {msg}", visible);
    pb.set_position(done as u64);
    pb.reset_eta();
    pb
}

/// A progress bar over `total` bytes of input, with the throughput and the time left, on stderr
/// (hidden as [`bar`] is).
pub fn bytes_bar(total: u64, what: &str, visible: bool) -> ProgressBar {
    let pb = styled(total, "{msg} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} [{elapsed_precise}<{eta_precise}]", visible);
    pb.set_message(what.to_string());
    pb
}

fn styled(total: u64, template: &str, visible: bool) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if !visible {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(ProgressStyle::with_template(template).expect("a valid progress template").progress_chars("=> "));
    pb
}
