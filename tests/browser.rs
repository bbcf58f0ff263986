//! The explorer in a real browser: headless Chromium, driven through the DevTools protocol, loads
//! the page from a running `thermoformer serve`, moves one head's temperature slider with the
//! keyboard, and the energies the page then shows must be `thermoformer score`'s with that
//! `--head-temperature`. The static export (`inspect --html`) is loaded the same way and its
//! readout checked against `inspect`.
//!
//! Chromium is the system's (`chromium`, `chromium-browser` or `google-chrome` on the PATH, or
//! `$THERMOFORMER_CHROMIUM`); `.ci/run` installs Debian's. Without one the tests say so and pass,
//! except under CI (`CI` set), where a missing browser is a failure.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("THERMOFORMER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The browser, or None (after saying why) where there is none and this is not CI.
fn browser() -> Option<Browser> {
    let Some(path) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "no Chromium on the PATH: .ci/run installs Debian's chromium");
        eprintln!("skipped: no Chromium on the PATH (install Debian's chromium to run the browser tests)");
        return None;
    };
    let options = LaunchOptions::default_builder()
        .path(Some(path))
        .sandbox(false)
        .window_size(Some((1280, 1400)))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .expect("browser options");
    Some(Browser::new(options).expect("starting Chromium"))
}

/// Evaluate `js` in the page and return its value.
fn eval(tab: &Tab, js: &str) -> Value {
    tab.evaluate(js, false).unwrap_or_else(|e| panic!("evaluating {js}: {e}")).value.unwrap_or(Value::Null)
}

/// Wait until `js` is true in the page.
fn wait_for(tab: &Tab, js: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while eval(tab, js) != Value::Bool(true) {
        let status = eval(tab, "document.getElementById('status') && document.getElementById('status').textContent");
        assert!(Instant::now() < deadline, "the page never reached {js} (its status line: {status})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cli_json(args: &[&str]) -> Value {
    let o = common::run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Focus the slider `id` and press `key` on it, as a person would.
fn press_on(tab: &Tab, id: &str, key: &str) {
    tab.wait_for_element(&format!("#{id}")).unwrap().focus().unwrap();
    tab.press_key(key).unwrap();
}

/// A text of the test model's full context.
const TEXT: &str = "You are all re";

/// A served test model (in `dir`) and the explorer open on it, showing `text`.
fn explorer_on(browser: &Browser, dir: &std::path::Path, text: &str) -> (String, common::Server, std::sync::Arc<Tab>) {
    let run = common::serve_model(dir);
    let server = common::start(&run);
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("{}/", server.url)).unwrap().wait_until_navigated().unwrap();
    wait_for(&tab, "window.thermoformer && window.thermoformer.last !== null");
    eval(&tab, &format!("const t = document.getElementById('text'); t.value = {text:?}; t.dispatchEvent(new Event('input')); true"));
    wait_for(&tab, &format!("window.thermoformer.last.tokens.length === {}", text.len() + 1));
    (run, server, tab)
}

#[test]
fn moving_a_head_slider_shows_the_energies_score_prints() {
    let Some(browser) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (run, _server, tab) = explorer_on(&browser, tmp.path(), TEXT);
    let text = TEXT;
    let before: f64 = eval(&tab, "Number(document.getElementById('total-energy').textContent)").as_f64().unwrap();

    // Home takes head 1.0's slider to its lowest temperature.
    press_on(&tab, "t-1-0", "Home");
    wait_for(&tab, "window.thermoformer.latencies.length >= 1 && window.thermoformer.last.temperatures[1][0] < 0.1");
    let t = eval(&tab, "window.thermoformer.temps[1][0]").as_f64().unwrap();
    assert!((t - 0.05).abs() < 1e-9, "the slider's lowest temperature is 0.05, got {t}");
    let shown_total: f64 = eval(&tab, "Number(document.getElementById('total-energy').textContent)").as_f64().unwrap();
    // (Arrays come back from the protocol by reference: read this one as JSON text.)
    let shown: Vec<f64> = serde_json::from_str(
        eval(&tab, "JSON.stringify(Array.from(document.querySelectorAll('#tokens span[data-energy]')).map(s => Number(s.dataset.energy)))")
            .as_str()
            .unwrap(),
    )
    .unwrap();

    let flag = format!("1.0={t}");
    let want = cli_json(&["score", "--checkpoint", &run, "--text", text, "--per-token", "--format", "jsonl", "--head-temperature", &flag]);
    let want_total = want["energy"].as_f64().unwrap();
    assert!((shown_total - want_total).abs() <= 1e-4, "the page shows E = {shown_total}, score says {want_total}");
    assert!((shown_total - before).abs() > 5e-4, "the energy moved with the temperature: {before} -> {shown_total}");
    let per_token = want["token_energies"].as_array().unwrap();
    assert_eq!(shown.len(), per_token.len(), "one coloured token per scored token");
    for (i, (s, w)) in shown.iter().zip(per_token).enumerate() {
        let w = w["energy"].as_f64().unwrap();
        assert!((s - w).abs() <= 1e-4, "token {i}: the page shows {s}, score says {w}");
    }
    // The head's readout is inspect's at that temperature.
    let readout = eval(&tab, "document.querySelector('#head-1-0 .stats').dataset.entropy").as_str().unwrap().parse::<f64>().unwrap();
    let heads = cli_json(&["inspect", "--checkpoint", &run, "--text", text, "--format", "json", "--head-temperature", &flag]);
    let want_h = heads["heads"][2]["entropy"].as_f64().unwrap();
    assert!((readout - want_h).abs() <= 1e-4, "head 1.0's entropy: page {readout}, inspect {want_h}");
}

#[test]
fn the_static_export_recomputes_a_head_as_inspect_does() {
    let Some(browser) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = common::serve_model(tmp.path());
    let text = "You are all re";
    let html = tmp.path().join("heads.html");
    let o = common::run(&["inspect", "--checkpoint", &run, "--text", text, "--html", html.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("http://") && !page.contains("https://"), "the file loads nothing from anywhere");
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("file://{}", html.display())).unwrap().wait_until_navigated().unwrap();
    wait_for(&tab, "document.querySelectorAll('.stats[data-entropy]').length === 4");
    let readout = |head: &str, key: &str| -> f64 {
        eval(&tab, &format!("document.querySelector('#head-{head} .stats').dataset.{key}")).as_str().unwrap().parse().unwrap()
    };
    // As written: inspect's figures at the trained temperatures.
    let trained = cli_json(&["inspect", "--checkpoint", &run, "--text", text, "--format", "json"]);
    for (k, head) in ["0-0", "0-1", "1-0", "1-1"].iter().enumerate() {
        let want = trained["heads"][k]["entropy"].as_f64().unwrap();
        assert!((readout(head, "entropy") - want).abs() <= 1e-4, "head {head}: {} against inspect's {want}", readout(head, "entropy"));
    }
    // Home takes head 0.1 to the slider's lowest temperature.
    press_on(&tab, "t-0-1", "Home");
    wait_for(&tab, "Number(document.querySelector('#head-0-1 .stats').dataset.temperature) < 0.1");
    let t = readout("0-1", "temperature");
    let flag = format!("0.1={t}");
    let moved = cli_json(&["inspect", "--checkpoint", &run, "--text", text, "--format", "json", "--head-temperature", &flag]);
    for key in [("entropy", "entropy"), ("lnZ", "ln_z")] {
        let want = moved["heads"][1][key.1].as_f64().unwrap();
        assert!((readout("0-1", key.0) - want).abs() <= 1e-4, "head 0.1 at T = {t}: {} {} against inspect's {want}", key.1, readout("0-1", key.0));
    }
    assert!((readout("0-1", "entropy") - trained["heads"][1]["entropy"].as_f64().unwrap()).abs() > 1e-3, "the readout moved");
    // The export's heat capacity and sink are inspect's, at the trained temperature and at the
    // slider's; and its C is the slope of its own entropy in ln T, at temperatures far from 1.
    // Mutation caught: the page's C as beta Var(E).
    for (k, head) in ["0-0", "1-1"].iter().enumerate().map(|(i, h)| (3 * i, h)) {
        for key in [("heatCapacity", "heat_capacity"), ("sink", "sink")] {
            let want = trained["heads"][k][key.1].as_f64().unwrap();
            assert!((readout(head, key.0) - want).abs() <= 1e-4, "head {head}: the export's {} {} against inspect's {want}", key.1, readout(head, key.0));
        }
    }
    let want_c = moved["heads"][1]["heat_capacity"].as_f64().unwrap();
    assert!((readout("0-1", "heatCapacity") - want_c).abs() <= 1e-4, "head 0.1 at T = {t}: C {} against inspect's {want_c}", readout("0-1", "heatCapacity"));
    // This barely trained model's levels are close together, so its heads' C peaks well below
    // T = 1: the check runs at a quarter, half, twice and four times head 1.0's peak.
    let t_peak = eval(&tab, "(() => { let best = 0, tb = 1; for (let i = 0; i <= 200; i++) { const t = 10 ** (-3 + i / 50); const c = thermo(DATA.heads[2].energies, t).heat_capacity; if (c > best) { best = c; tb = t; } } return tb; })()").as_f64().unwrap();
    for t in [0.25 * t_peak, 0.5 * t_peak, 2.0 * t_peak, 4.0 * t_peak] {
        let js = format!(
            "(() => {{ const e = DATA.heads[2].energies, d = 1e-3; const c = thermo(e, {t}).heat_capacity; \
             const slope = (thermo(e, {t} * Math.exp(d)).entropy - thermo(e, {t} * Math.exp(-d)).entropy) / (2 * d); return JSON.stringify([c, slope]); }})()"
        );
        let [c, slope]: [f64; 2] = serde_json::from_str(eval(&tab, &js).as_str().unwrap()).unwrap();
        println!("export, head 1.0 at T = {t:.4} (peak {t_peak:.4}): C = {c:.6}, dH/d ln T = {slope:.6}");
        assert!(c > 0.05 && (c - slope).abs() < 1e-6 + 1e-3 * c, "export at T = {t}: C = {c}, dH/d ln T = {slope}");
    }
}

#[test]
fn the_response_panel_ranks_heads_and_sets_sliders_as_inspect_measures() {
    let Some(browser) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (run, _server, tab) = explorer_on(&browser, tmp.path(), TEXT);
    let text = TEXT;
    let want = cli_json(&["inspect", "--checkpoint", &run, "--text", text, "--response", "--phase", "--format", "json"]);
    // The sink column of the head grid is inspect's.
    for (k, head) in ["0-0", "0-1", "1-0", "1-1"].iter().enumerate() {
        let shown: f64 = eval(&tab, &format!("document.querySelector('#head-{head} .stats').dataset.sink")).as_str().unwrap().parse().unwrap();
        let sink = want["heads"][k]["sink"].as_f64().unwrap();
        assert!((shown - sink).abs() <= 1e-4, "head {head}: sink {shown} on the page, {sink} from inspect");
    }
    tab.wait_for_element("#response").unwrap().click().unwrap();
    wait_for(&tab, "document.querySelectorAll('#response-table tbody tr').length === 4");
    // Ranked by |chi|, each figure inspect's.
    let rows: Vec<Vec<String>> = serde_json::from_str(
        eval(&tab, "JSON.stringify(Array.from(document.querySelectorAll('#response-table tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent)))").as_str().unwrap(),
    )
    .unwrap();
    let mut chis = Vec::new();
    for row in &rows {
        let (l, h) = row[0].split_once('.').unwrap();
        let k = 2 * l.parse::<usize>().unwrap() + h.parse::<usize>().unwrap();
        for (col, key) in [(2, "susceptibility"), (3, "ablated_hot"), (4, "ablated_cold")] {
            let w = want["heads"][k][key].as_f64().unwrap();
            let shown: f64 = row[col].parse().unwrap();
            assert!((shown - w).abs() <= 1e-3, "head {}: {key} {shown} on the page, {w} from inspect", row[0]);
        }
        chis.push(row[2].parse::<f64>().unwrap().abs());
    }
    assert!(chis.windows(2).all(|w| w[0] >= w[1]), "ranked by |chi|: {chis:?}");
    // A click on the top head's cold figure takes its slider to the lowest temperature.
    let (l, h) = rows[0][0].split_once('.').unwrap();
    eval(&tab, "document.querySelector('#response-table tbody tr td.ablate[data-kind=cold]').click(); true");
    wait_for(&tab, &format!("window.thermoformer.last.temperatures[{l}][{h}] < 0.06"));
    let slider: f64 = eval(&tab, &format!("10 ** Number(document.getElementById('t-{l}-{h}').value)")).as_f64().unwrap();
    assert!((slider - 0.05).abs() < 1e-6, "the slider moved to the lowest temperature: {slider}");
    // The phase diagram: the page's T* are inspect's, and the picture is drawn.
    tab.wait_for_element("#phase").unwrap().click().unwrap();
    wait_for(&tab, "window.thermoformer.phase !== undefined && window.thermoformer.phase.heads.length === 4");
    // (The page's phase diagram is of the text at the temperatures now set: one head moved.)
    let page: Vec<f64> = serde_json::from_str(eval(&tab, "JSON.stringify(window.thermoformer.phase.heads.map(h => h.t_star))").as_str().unwrap()).unwrap();
    let flag = format!("{l}.{h}=0.05");
    let moved = cli_json(&["inspect", "--checkpoint", &run, "--text", text, "--phase", "--format", "json", "--head-temperature", &flag]);
    for (k, t) in page.iter().enumerate() {
        let w = moved["heads"][k]["t_star"].as_f64().unwrap();
        assert!((t - w).abs() <= 1e-6 * w, "head {k}: T* {t} on the page, {w} from inspect");
    }
    let ink: f64 = eval(&tab, "(() => { const c = document.getElementById('phase-curves'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()").as_f64().unwrap();
    assert!(ink > 500.0, "the C(T) curves are drawn: {ink} pixels");
}
