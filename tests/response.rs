//! The physics lab: heat capacity against its own definition, susceptibilities against finite
//! differences of the energy, thermal ablations against the composed path with the weights
//! replaced, the phase diagram's peak against a closed form, the entropy-length slope, sinks and
//! the length scaling.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use thermoformer::config::{MlpKind, Norm, Positions};
use thermoformer::kernels::Kernels;
use thermoformer::model::params::Params;
use thermoformer::model::{AttnStats, HeadPatch, HeadTemperature};
use thermoformer::physics::inspect::Selection;
use thermoformer::physics::phase;
use thermoformer::physics::response::{self, EnergySample};
use thermoformer::physics::thermo;
use thermoformer::{Gpt, ModelConfig};

/// A GPT-shaped and a Llama-shaped (grouped kv heads, rotary, RMSNorm, SwiGLU) model, with a
/// large init so that scores are of order one and more.
fn models(kernels: Kernels) -> Vec<(&'static str, ModelConfig, Gpt)> {
    let gpt = ModelConfig { context: 12, n_layer: 2, n_head: 2, d_model: 16, ..ModelConfig::nano_cpu(29) };
    let llama = ModelConfig {
        positions: Positions::Rope,
        norm: Norm::RmsNorm,
        mlp: MlpKind::SwiGlu,
        n_head: 4,
        n_kv_head: Some(2),
        d_model: 24,
        tied_head: false,
        ..gpt.clone()
    };
    [("gpt", gpt), ("llama-gqa", llama)]
        .into_iter()
        .map(|(name, cfg)| {
            let (_, mut model) = Params::init(&cfg, 0.35, 11, &Device::Cpu).unwrap();
            model.set_kernels(kernels);
            (name, cfg, model)
        })
        .collect()
}

/// Token ids of a text of `n` tokens (the start, 0, not included).
fn text_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| (1 + (i * 7 + i * i) % (vocab - 1)) as u32).collect()
}

/// Every head's temperature set apart from 1, so that d/d ln T and d/d beta differ.
fn spread_temperatures(model: &mut Gpt) {
    let temps: Vec<Vec<f64>> = model.temperatures().unwrap().iter().enumerate().map(|(l, row)| (0..row.len()).map(|h| 0.45 + 0.4 * (l * row.len() + h) as f64).collect()).collect();
    model.set_temperatures(&temps).unwrap();
}

fn set_head(model: &Gpt, layer: usize, head: usize, t: f64) -> Gpt {
    let mut m = model.clone();
    m.override_temperatures(None, &[HeadTemperature { layer, head, temperature: t }]).unwrap();
    m
}

#[test]
fn heat_capacity_is_the_log_temperature_slope_of_the_reported_entropy() {
    // Each head's own levels do not depend on its own temperature (only on earlier layers), so
    // moving one head's T and reading its mean entropy gives dH/d ln T at fixed levels: C.
    // Mutation caught: head_rows's C as beta Var(E) (off by a factor T away from T = 1).
    let delta = 1e-3;
    for kernels in [Kernels::Fused, Kernels::Composed] {
        for (name, cfg, model) in models(kernels) {
            let ids = common::random_ids(2, cfg.context, cfg.vocab_size - 1, 0, 5);
            for (k, t) in [0.3, 0.6, 2.5, 5.0].into_iter().enumerate() {
                let (l, h) = (k % cfg.n_layer, (k / cfg.n_layer) % cfg.n_head);
                let read = |temp: f64| thermo::head_summaries(&set_head(&model, l, h, temp).forward_with_stats(&ids).unwrap().1).unwrap()[l * cfg.n_head + h].clone();
                let c = read(t).heat_capacity;
                let slope = (read(t * f64::exp(delta)).entropy - read(t * f64::exp(-delta)).entropy) / (2.0 * delta);
                println!("{kernels:?} {name} head {l}.{h} T = {t}: C = {c:.5}, dH/dlnT = {slope:.5}");
                assert!(c > 0.02, "a head with structure at T = {t}: C = {c}");
                assert!((slope - c).abs() < 2e-3 + 1e-2 * c, "{kernels:?} {name} head {l}.{h} at T = {t}: C = {c}, dH/d ln T = {slope}");
            }
        }
    }
}

#[test]
fn susceptibility_is_the_finite_difference_of_the_energy_in_log_temperature() {
    // Mutations caught: the derivative taken with respect to beta (the temperatures are spread
    // over 0.45..2.85, so d/d beta = -T d/d ln T differs in size and sign), and the sign flipped.
    let delta = 1e-2;
    for kernels in [Kernels::Fused, Kernels::Composed] {
        for (name, cfg, mut model) in models(kernels) {
            spread_temperatures(&mut model);
            let sample = EnergySample::text(&model, 0, &text_ids(cfg.context, cfg.vocab_size)).unwrap();
            let (e, chi) = response::susceptibilities(&model, &sample).unwrap();
            let temps = model.temperatures().unwrap();
            let energy = |m: &Gpt| sample.energy(m).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert!((energy(&model) - e).abs() < 1e-9, "the E chi is taken at");
            let mut moved = 0;
            for l in 0..cfg.n_layer {
                for h in 0..cfg.n_head {
                    let t = temps[l][h];
                    let fd = (energy(&set_head(&model, l, h, t * f64::exp(delta))) - energy(&set_head(&model, l, h, t * f64::exp(-delta)))) / (2.0 * delta);
                    println!("{kernels:?} {name} head {l}.{h} (T = {t:.2}): chi = {:.5}, finite difference {fd:.5}", chi[l][h]);
                    assert!((chi[l][h] - fd).abs() < 2e-3 + 1e-2 * fd.abs(), "{kernels:?} {name} head {l}.{h}: chi = {}, dE/dlnT by differences = {fd}", chi[l][h]);
                    moved += (fd.abs() > 0.05) as usize;
                }
            }
            assert!(moved >= 2, "{name}: at least two heads respond to their temperature");
        }
    }
}

/// The composed path of `model` with head `layer`.`head`'s weights replaced by `weights`
/// `(T, T)`, minus E: the independent side of the ablation checks.
fn energy_with_weights(model: &Gpt, sample: &EnergySample, layer: usize, head: usize, weights: Vec<f32>, t: usize, base: f64) -> f64 {
    let mut m = model.clone();
    m.set_kernels(Kernels::Composed);
    m.patch_head(layer, head, HeadPatch::Weights(Tensor::from_vec(weights, (t, t), &Device::Cpu).unwrap())).unwrap();
    sample.energy(&m).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() - base
}

#[test]
fn ablations_equal_the_composed_path_with_uniform_and_argmax_weights() {
    // Hot runs the fused kernel at beta_h = 0; cold the model's own argmax. Against them, the
    // test builds the uniform causal average and the one-hot rows on the lowest reported energy
    // (the first on a tie) itself. Mutations caught: uniform weights over the future keys too, a
    // cold head on the last maximum or on the wrong head, and E's sign.
    for (name, cfg, mut model) in models(Kernels::Fused) {
        spread_temperatures(&mut model);
        let ids = text_ids(cfg.context, cfg.vocab_size);
        let sample = EnergySample::text(&model, 0, &ids).unwrap();
        let all = Selection::default();
        let r = response::response(&model, &sample, &all, false).unwrap();
        assert_eq!(r.heads.len(), cfg.n_layer * cfg.n_head);
        let t = cfg.context; // the input: start + ids[..n-1]
        let mut input = vec![0u32];
        input.extend_from_slice(&ids[..ids.len() - 1]);
        let (_, stats) = model.forward_with_stats(&Tensor::new(input.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        for hr in &r.heads {
            let (l, h) = (hr.layer, hr.head);
            let uniform: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 1.0 / (i + 1) as f32 } else { 0.0 })).collect();
            let hot = energy_with_weights(&model, &sample, l, h, uniform, t, r.energy);
            let energies = stats[l].energy.i((0, h)).unwrap().to_vec2::<f32>().unwrap();
            let argmax: Vec<f32> = energies
                .iter()
                .enumerate()
                .flat_map(|(i, row)| {
                    let best = (0..=i).fold(0, |b, j| if row[j] < row[b] { j } else { b });
                    (0..t).map(move |j| if j == best { 1.0 } else { 0.0 })
                })
                .collect();
            let cold = energy_with_weights(&model, &sample, l, h, argmax, t, r.energy);
            println!("{name} head {l}.{h}: hot {:.5} / {hot:.5}, cold {:.5} / {cold:.5}", hr.ablated_hot, hr.ablated_cold);
            assert!((hr.ablated_hot - hot).abs() < 1e-3, "{name} head {l}.{h}: ablated_hot {} against the uniform weights' {hot}", hr.ablated_hot);
            assert!((hr.ablated_cold - cold).abs() < 1e-3, "{name} head {l}.{h}: ablated_cold {} against the argmax weights' {cold}", hr.ablated_cold);
        }
        assert!(r.heads.iter().any(|h| h.ablated_hot.abs() > 0.05) && r.heads.iter().any(|h| h.ablated_cold.abs() > 0.05), "{name}: the ablations move E");
        // --layers/--heads bound the ablations.
        let one = Selection { layers: Some(vec![1]), heads: Some(vec![0]) };
        let r1 = response::response(&model, &sample, &one, false).unwrap();
        assert_eq!(r1.heads.iter().map(|h| (h.layer, h.head)).collect::<Vec<_>>(), vec![(1, 0)]);
    }
}

/// The tiny model with head 0 of layer 0's query weights zeroed: it scores every key the same.
fn zero_query_model() -> (ModelConfig, Gpt) {
    let (_, cfg, _, _) = common::tiny_model(false);
    let (params, _) = Params::init(&cfg, 0.3, 2, &Device::Cpu).unwrap();
    let mut tensors = params.tensors();
    let name = "blocks.0.attn.qkv.weight";
    let w = tensors[name].clone();
    let rows = w.dim(0).unwrap();
    let d = cfg.d_model / cfg.n_head;
    let mask: Vec<f32> = (0..rows).map(|r| if r < d { 0.0 } else { 1.0 }).collect(); // head 0's query rows
    tensors.insert(name.to_string(), w.broadcast_mul(&Tensor::from_vec(mask, (rows, 1), &Device::Cpu).unwrap()).unwrap());
    let model = Params::model_from_tensors(&cfg, tensors, &Device::Cpu).unwrap();
    (cfg, model)
}

#[test]
fn a_cold_head_breaks_ties_on_the_first_key() {
    // A head whose queries are zero scores every key the same, so T -> 0 puts all weight on the
    // first key, the start. Mutation caught: a tie going to the last key (the query's own).
    let (cfg, mut model) = zero_query_model();
    model.patch_head(0, 0, HeadPatch::Cold).unwrap();
    let ids = common::random_ids(1, cfg.context, cfg.vocab_size - 1, 0, 9);
    let (_, stats) = model.forward_with_stats(&ids).unwrap();
    let alpha = stats[0].alpha.i((0, 0)).unwrap().to_vec2::<f32>().unwrap();
    for (i, row) in alpha.iter().enumerate() {
        assert_eq!(row[0], 1.0, "query {i}: all weight on the start, got {row:?}");
    }
    let s = &thermo::head_summaries(&stats).unwrap()[0];
    assert_eq!((s.sink, s.entropy), (1.0, 0.0), "a cold head on the start is a full sink with no entropy");
}

/// One head's statistics built by hand: energies `[query][key]` (+inf: not seen), weights
/// Boltzmann at T = 1.
fn hand_stats(energies: &[Vec<f64>]) -> AttnStats {
    let t = energies.len();
    let flat: Vec<f32> = energies.iter().flatten().map(|&e| e as f32).collect();
    let alpha: Vec<f32> = energies
        .iter()
        .flat_map(|row| {
            let seen: Vec<f64> = row.iter().copied().filter(|e| e.is_finite()).collect();
            let (p, _) = thermo::boltzmann(&seen, 1.0);
            let mut it = p.into_iter();
            row.iter().map(move |e| if e.is_finite() { it.next().unwrap() as f32 } else { 0.0 }).collect::<Vec<_>>()
        })
        .collect();
    let ln_z: Vec<f32> = energies.iter().map(|row| thermo::RowStats::from_energies(&row.iter().copied().filter(|e| e.is_finite()).collect::<Vec<_>>(), 1.0).ln_z as f32).collect();
    AttnStats {
        alpha: Tensor::from_vec(alpha, (1, 1, t, t), &Device::Cpu).unwrap(),
        ln_z: Tensor::from_vec(ln_z, (1, 1, t), &Device::Cpu).unwrap(),
        energy: Tensor::from_vec(flat, (1, 1, t, t), &Device::Cpu).unwrap(),
        beta: Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        row_scale: vec![1.0; t],
    }
}

#[test]
fn the_phase_peak_of_a_two_level_head_is_its_closed_form() {
    // Two keys at energies 0 and Delta: C = (Delta/2T)^2 / cosh^2(Delta/2T), which peaks at
    // T = Delta / 2.3994. Mutation caught: C = beta Var(E) (its peak moves to T ~ Delta / 1.5).
    let inf = f64::INFINITY;
    let grid = phase::log_grid(0.01, 100.0, 81).unwrap();
    let spacing = grid[1] / grid[0];
    for delta in [0.3, 1.0, 2.0, 7.5] {
        let p = phase::phase_diagram(&[hand_stats(&[vec![0.0, inf], vec![0.0, delta]])], &grid).unwrap();
        let head = &p.heads[0];
        let want = delta / 2.399357;
        println!("Delta = {delta}: T* = {:.5} (closed form {want:.5}), C* = {:.5}", head.t_star, head.c_star);
        assert!(head.peak_in_grid);
        assert!(head.t_star / want < spacing && want / head.t_star < spacing, "Delta = {delta}: T* = {}, closed form {want}", head.t_star);
        // Row 0 has one key (C = 0): the mean over both rows halves the two-level peak 0.4392.
        assert!((head.c_star - 0.4392 / 2.0).abs() < 2e-3, "C* = {}", head.c_star);
    }
}

#[test]
fn the_sink_of_a_head_whose_start_key_is_lowest_goes_to_one_when_cold() {
    // Every query's start key lies lowest by 3: the sink tends to 1 as T -> 0 and to 1/n as
    // T -> infinity.
    let inf = f64::INFINITY;
    let t = 6;
    let energies: Vec<Vec<f64>> = (0..t).map(|i| (0..t).map(|j| if j > i { inf } else if j == 0 { -3.0 } else { 0.1 * j as f64 }).collect()).collect();
    let p = phase::phase_diagram(&[hand_stats(&energies)], &[0.05, 1.0, 1e4]).unwrap();
    let sink = &p.heads[0].sink;
    let uniform: f64 = (2..=t).map(|n| 1.0 / n as f64).sum::<f64>() / (t - 1) as f64;
    assert!(sink[0] > 0.999, "cold: {sink:?}");
    assert!((sink[2] - uniform).abs() < 1e-3, "hot: {} against {uniform}", sink[2]);
    // The summary's sink reads the applied weights at T = 1 over the queries after the start.
    let s = &thermo::head_summaries(&[hand_stats(&energies)]).unwrap()[0];
    assert!((s.sink - sink[1]).abs() < 1e-6, "{} against the diagram's {}", s.sink, sink[1]);
}

#[test]
fn entropy_grows_as_ln_n_for_a_uniform_head_and_not_for_a_retriever() {
    // Zero queries make head 0 of layer 0 uniform over its keys: H = ln n, slope 1. A cold head
    // keeps one key whatever n: slope 0. Mutation caught: the fit against n instead of ln n.
    let (cfg, mut model) = zero_query_model();
    model.patch_head(1, 1, HeadPatch::Cold).unwrap();
    let ids = common::random_ids(2, cfg.context, cfg.vocab_size - 1, 0, 3);
    let heads = thermo::head_summaries(&model.forward_with_stats(&ids).unwrap().1).unwrap();
    let (uniform, retriever, other) = (&heads[0], &heads[3], &heads[1]);
    println!("slopes: uniform {:.4}, cold {:.4}, trained-init head {:.4}", uniform.entropy_slope, retriever.entropy_slope, other.entropy_slope);
    assert!((uniform.entropy_slope - 1.0).abs() < 1e-4 && uniform.entropy_intercept.abs() < 1e-4, "{uniform:?}");
    assert!(retriever.entropy_slope.abs() < 1e-6, "{retriever:?}");
    assert!(other.entropy_slope > 0.05 && other.entropy_slope < 0.99, "a head with structure lies between: {other:?}");
}

#[test]
fn log_n_scaling_is_a_per_row_temperature() {
    // In a one-layer model the last position's logits depend on attention only through its own
    // row, so the scaled model's last logits are the plain model's with every head at
    // T / (1 + s ln n), n the keys of the last row. The fused, composed and cached paths agree,
    // and the reported rows stay Boltzmann at their scaled temperatures.
    let s = 0.3;
    let cfg = ModelConfig { n_layer: 1, ..common::tiny_model(false).1 };
    let (_, plain) = Params::init(&cfg, 0.4, 5, &Device::Cpu).unwrap();
    let ids = common::random_ids(1, cfg.context, cfg.vocab_size - 1, 0, 8);
    let n = cfg.context;
    let mut scaled = plain.clone();
    scaled.set_log_n_scaling(s).unwrap();
    let last = |m: &Gpt| m.forward(&ids).unwrap().i((0, n - 1)).unwrap().to_vec1::<f32>().unwrap();
    let mut equivalent = plain.clone();
    equivalent.override_temperatures(Some(1.0 / (1.0 + s * (n as f64).ln())), &[]).unwrap();
    let (a, b) = (last(&scaled), last(&equivalent));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "scaled against per-row temperature: {worst}");
    assert!(a.iter().zip(last(&plain)).any(|(x, y)| (x - y).abs() > 1e-3), "the scaling changes the logits");
    let mut composed = scaled.clone();
    composed.set_kernels(Kernels::Composed);
    let full = scaled.forward(&ids).unwrap();
    let diff = (full.clone() - composed.forward(&ids).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "fused against composed: {diff}");
    let mut cache = thermoformer::model::KvCache::new();
    let head = scaled.forward_cached(&ids.narrow(1, 0, 5).unwrap(), &mut cache).unwrap();
    let tail = scaled.forward_cached(&ids.narrow(1, 5, n - 5).unwrap(), &mut cache).unwrap();
    let cached = Tensor::cat(&[head, tail], 1).unwrap();
    let diff = (full - cached).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "whole pass against cached: {diff}");
    let heads = thermo::head_summaries(&scaled.forward_with_stats(&ids).unwrap().1).unwrap();
    assert!(heads.iter().all(|h| h.identity_residual < 1e-5), "{heads:?}");
    assert!(scaled.set_log_n_scaling(-1.0).is_err(), "a factor that turns negative within the context is refused");
}

#[test]
fn the_lab_refuses_nonsense_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = common::trained(tmp.path());
    let ck = run.to_str().unwrap();
    let html = tmp.path().join("x.html");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["inspect", "--checkpoint", ck, "--phase", "--text", "First", "--grid", "2,1,10"], 2, "--grid"),
        (vec!["inspect", "--checkpoint", ck, "--phase", "--text", "First", "--grid", "0.1,10,2.5"], 2, "--grid"),
        (vec!["inspect", "--checkpoint", ck, "--phase", "--text", "First", "--grid", "0.1,10"], 2, "--grid"),
        (vec!["inspect", "--checkpoint", ck, "--response", "--text", ""], 1, "no tokens"),
        (vec!["inspect", "--checkpoint", ck, "--response", "--text", "First", "--heads", "7"], 2, "--heads 7"),
        (vec!["inspect", "--checkpoint", ck, "--text", "First", "--log-n-scaling", "-2"], 2, "--log-n-scaling"),
        (vec!["score", "--checkpoint", ck, "--text", "First", "--log-n-scaling", "nan"], 2, "--log-n-scaling"),
        (vec!["inspect", "--checkpoint", ck, "--text", "First", "--log-n-scaling", "0.1", "--html", html.to_str().unwrap()], 2, "--html"),
        (vec!["inspect", "--checkpoint", ck, "--response", "--sweep", "1,2"], 2, "--sweep"),
        (vec!["inspect", "--checkpoint", ck, "--grid", "0.1,1,5", "--text", "First"], 2, "--phase"),
    ];
    for (args, code, needle) in cases {
        let out = common::run(&args);
        println!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).lines().find(|l| l.starts_with("error")).unwrap_or(""));
        common::assert_clean_error(&out, code, needle);
    }
    // The length scaling moves score's energies, and inspect's rows follow it.
    let energy = |extra: &[&str]| -> f64 {
        let mut args = vec!["score", "--checkpoint", ck, "--text", "First Citizen", "--format", "jsonl"];
        args.extend_from_slice(extra);
        let o = common::run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["energy"].as_f64().unwrap()
    };
    // (This run is barely trained, so its attention moves E little: measured 6e-4 at s = 2 here, 0.65
    // nats at s = 0.5 on the default model's "First Citizen".)
    let (scaled, plain) = (energy(&["--log-n-scaling", "2"]), energy(&[]));
    println!("E {plain} plain, {scaled} with s = 2");
    assert!((scaled - plain).abs() > 1e-6, "the scaling changes the energy: {plain} and {scaled}");
    assert_eq!(energy(&["--log-n-scaling", "0"]), energy(&[]), "s = 0 is the plain model");
}

#[test]
fn a_head_built_to_attend_to_the_start_is_read_as_a_sink() {
    // Layer 0, head 0: a constant query u (its bias, zero weights) and keys k_j = v (x_0 . x_j),
    // x_j the normalised input at position j and x_0 the start's. Every score is then
    // (u.v)(x_0 . x_j)/sqrt(d), largest at j = 0 where x_0 . x_0 = |x_0|^2 ~ d: the head sends its
    // weight to the start. Mutations caught: the sink read from the diagonal or the last key,
    // or the start's weight averaged over the start's own row.
    let cfg = ModelConfig { context: 12, n_layer: 1, n_head: 2, d_model: 32, bias: true, ..ModelConfig::nano_cpu(29) };
    let (params, _) = Params::init(&cfg, 0.3, 4, &Device::Cpu).unwrap();
    let mut tensors = params.tensors();
    let (d, hd) = (cfg.d_model, cfg.d_model / cfg.n_head);
    // x_0 = LayerNorm(tok_emb[start] + pos_emb[0]) with unit gain and zero bias (as initialised).
    let h0: Vec<f64> = (&tensors["tok_emb.weight"].i(0).unwrap() + &tensors["pos_emb.weight"].i(0).unwrap()).unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
    let mean = h0.iter().sum::<f64>() / d as f64;
    let var = h0.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d as f64;
    let x0: Vec<f64> = h0.iter().map(|x| (x - mean) / (var + cfg.ln_eps).sqrt()).collect();
    let rows = tensors["blocks.0.attn.qkv.weight"].to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let mut w = rows.clone();
    let mut bias = tensors["blocks.0.attn.qkv.bias"].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let gain = 3.0;
    for r in 0..hd {
        w[r] = vec![0.0; d]; // head 0's queries: the constant bias u = gain
        bias[r] = gain;
        w[cfg.n_head * hd + r] = x0.iter().map(|x| gain * x).collect(); // head 0's keys: v = gain
        bias[cfg.n_head * hd + r] = 0.0;
    }
    let to_tensor = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    tensors.insert("blocks.0.attn.qkv.weight".into(), to_tensor(w.concat().into_iter().map(|x| x as f32).collect(), &[rows.len(), d]));
    tensors.insert("blocks.0.attn.qkv.bias".into(), to_tensor(bias.iter().map(|&x| x as f32).collect(), &[rows.len()]));
    let model = Params::model_from_tensors(&cfg, tensors, &Device::Cpu).unwrap();
    // Position 0 holds the start (id 0) in every row; no later position does.
    let ids: Vec<u32> = (0..2 * cfg.context).map(|k| if k % cfg.context == 0 { 0 } else { 1 + (k * 5 % (cfg.vocab_size - 1)) as u32 }).collect();
    let ids = Tensor::from_vec(ids, (2, cfg.context), &Device::Cpu).unwrap();
    let (_, stats) = model.forward_with_stats(&ids).unwrap();
    let heads = thermo::head_summaries(&stats).unwrap();
    println!("sink of the built head {:.6}, of the other {:.4}", heads[0].sink, heads[1].sink);
    assert!(heads[0].sink > 0.99, "the built head: {:?}", heads[0]);
    assert!(heads[1].sink < 0.6, "the untouched head is no full sink: {:?}", heads[1]);
    // Along the phase grid: all on the start when cold, spread when hot.
    let p = phase::phase_diagram(&stats, &[0.1, 1.0, 1e4]).unwrap();
    assert!(p.heads[0].sink[0] > 0.999 && p.heads[0].sink[2] < 0.5, "{:?}", p.heads[0].sink);
}
