//! How long a slider move takes to show on the explorer's page, measured in the browser: starts
//! `thermoformer serve` on a run, loads the page in headless Chromium, sets a text, then moves
//! the every-head slider one step at a time with the keyboard, each time waiting for the page to
//! draw the answer, and prints the median and the 90th percentile of the page's own timings
//! (from the slider's input event to the redraw, the 16 ms debounce included).
//!
//! ```sh
//! cargo build --release && cargo run --release --example explorer_latency -- [RUN_DIR] [MOVES]
//! ```
//!
//! Needs Chromium on the PATH (Debian's `chromium`). Defaults: `checkpoints/shakespeare`, 40 moves,
//! and a 63-character line (64 positions with the start for the default char model, its whole
//! context; fewer tokens for a BPE).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use headless_chrome::{Browser, LaunchOptions};

fn main() -> Result<()> {
    let run = std::env::args().nth(1).unwrap_or_else(|| "checkpoints/shakespeare".into());
    let moves: usize = std::env::args().nth(2).map_or(Ok(40), |s| s.parse()).context("MOVES must be a number")?;
    let bin = std::env::current_exe()?.parent().and_then(|p| p.parent()).map(|p| p.join("thermoformer")).context("locating the binary")?;
    let mut server = Command::new(&bin).args(["serve", "--checkpoint", &run, "--port", "0"]).stdout(Stdio::piped()).spawn().with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().context("the server's stdout")?).read_line(&mut line)?;
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).context("no URL from the server")?.to_string();
    let result = measure(&url, moves);
    let _ = server.kill();
    let (p50, p90, n, tokens) = result?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    println!("{n} slider moves on {run}, a text of {tokens} tokens: p50 {p50:.1} ms, p90 {p90:.1} ms (CPU: {cpu})");
    Ok(())
}

fn measure(url: &str, moves: usize) -> Result<(f64, f64, usize, u64)> {
    let path = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(move |d| d.join(n)).collect::<Vec<PathBuf>>())
        .find(|p| p.is_file())
        .context("no Chromium on the PATH")?;
    let options = LaunchOptions::default_builder().path(Some(path)).sandbox(false).window_size(Some((1280, 1400))).build()?;
    let browser = Browser::new(options)?;
    let tab = browser.new_tab()?;
    tab.navigate_to(url)?.wait_until_navigated()?;
    let eval = |js: &str| -> Result<serde_json::Value> { Ok(tab.evaluate(js, false)?.value.unwrap_or(serde_json::Value::Null)) };
    let wait = |js: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while eval(js)? != serde_json::Value::Bool(true) {
            if Instant::now() > deadline {
                bail!("the page never reached {js}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    wait("window.thermoformer && window.thermoformer.last !== null")?;
    let text = "ROMEO: I will not be entreated. Go, then; for 'tis in vain to s";
    eval(&format!("const t = document.getElementById('text'); t.value = {text:?}; t.dispatchEvent(new Event('input')); true"))?;
    wait(&format!("window.thermoformer.last.tokens.slice(1).join('') === {text:?}"))?;
    tab.wait_for_element("#global-t")?.focus()?;
    for k in 0..moves {
        // Alternate directions so the temperature stays near its trained value.
        tab.press_key(if k % 2 == 0 { "ArrowRight" } else { "ArrowLeft" })?;
        wait(&format!("window.thermoformer.latencies.length === {}", k + 1))?;
    }
    let parts: Vec<serde_json::Value> = serde_json::from_str(eval("JSON.stringify(window.thermoformer.timings)")?.as_str().context("timings")?)?;
    for key in ["wait", "fetch", "parse", "draw"] {
        let mut v: Vec<f64> = parts.iter().filter_map(|p| p[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        if !v.is_empty() {
            println!("  {key}: p50 {:.1} ms", v[v.len() / 2]);
        }
    }
    let mut ms: Vec<f64> = serde_json::from_str(eval("JSON.stringify(window.thermoformer.latencies)")?.as_str().context("latencies")?)?;
    ms.sort_by(f64::total_cmp);
    let tokens = eval("window.thermoformer.last.energies.length")?.as_u64().unwrap_or(0);
    Ok((ms[ms.len() / 2], ms[ms.len() * 9 / 10], ms.len(), tokens))
}
