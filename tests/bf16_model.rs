//! The model in bf16: the fused path against the composed reference that rounds the same
//! operands, bf16 against f32, and whole training runs bit for bit across the bf16 kernels.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use thermoformer::config::{Activation, Positions, Precision};
use thermoformer::kernels::bf16::Kernel;
use thermoformer::kernels::Kernels;
use thermoformer::model::loss;
use thermoformer::model::params::Params;
use thermoformer::ModelConfig;

mod common;

/// ||a - b|| / ||b|| over all elements.
fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (common::flat(a), common::flat(b));
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Logits, loss and every gradient of one forward and backward pass, by name.
fn pass(cfg: &ModelConfig, tensors: &HashMap<String, Tensor>, kernels: Kernels, precision: Precision) -> Vec<(String, Tensor)> {
    let (b, t) = (3, cfg.context);
    let ids = common::random_ids(b, t, cfg.vocab_size - 1, cfg.vocab_size as u32 - 1, 5);
    let targets = common::random_ids(b, t, cfg.vocab_size - 1, 0, 6).flatten_all().unwrap();
    let (params, mut model) = Params::from_tensors_as(cfg, tensors.clone(), DType::F32, &Device::Cpu).unwrap();
    model.set_kernels(kernels);
    model.set_precision(precision);
    let logits = model.forward(&ids).unwrap().flatten_to(1).unwrap();
    let l = loss::cross_entropy_with(&logits, &targets, 0.1, kernels).unwrap();
    let grads = l.loss.backward().unwrap();
    let mut out = vec![("logits".to_string(), logits), ("loss".to_string(), l.loss.clone())];
    for p in params.trainable() {
        out.push((p.name.clone(), grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {}", p.name)).clone()));
    }
    out
}

fn configs() -> Vec<ModelConfig> {
    let base = ModelConfig { context: 37, n_layer: 2, n_head: 3, d_model: 48, learn_temperature: true, ..ModelConfig::nano_cpu(41) };
    vec![
        ModelConfig { positions: Positions::Rope, ..base.clone() },
        ModelConfig { positions: Positions::Learned, bias: true, activation: Activation::GeluTanh, tied_head: false, ..base.clone() },
        // A Llama-style shape: every new product (grouped q/k/v, SwiGLU's gate and up) in bf16.
        ModelConfig {
            positions: Positions::Rope,
            n_head: 4,
            norm: thermoformer::config::Norm::RmsNorm,
            mlp: thermoformer::config::MlpKind::SwiGlu,
            d_ff: Some(40),
            n_kv_head: Some(2),
            windows: vec![None, Some(9)],
            ..base
        },
    ]
}

fn round(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

/// The bf16 Linear op and its two backward products against f32 products of bf16-rounded
/// operands (exact products, so only the order of f32 sums differs): the forward rounds x and
/// w, dx rounds dy and w, dw rounds dy and x. Rounding any one operand less (or truncating)
/// moves a result by about 2^-9 relative, far above the 1e-6 allowed.
#[test]
fn bf16_linear_and_its_gradients_are_products_of_rounded_operands() {
    use thermoformer::kernels::bf16::ops;
    for (m, n, k) in [(51, 144, 48), (7, 33, 65), (200, 41, 130)] {
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap()).unwrap();
        let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap()).unwrap();
        let dy = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu).unwrap();
        let y = ops::linear(x.as_tensor(), w.as_tensor(), None).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let (gx, gw) = (grads.get(x.as_tensor()).unwrap(), grads.get(w.as_tensor()).unwrap());
        let (xr, wr, dyr) = (round(x.as_tensor()), round(w.as_tensor()), round(&dy));
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let want_y = f64s(&xr).matmul(&f64s(&wr).t().unwrap()).unwrap();
        let want_gx = f64s(&dyr).matmul(&f64s(&wr)).unwrap();
        let want_gw = f64s(&dyr).t().unwrap().matmul(&f64s(&xr)).unwrap();
        for (name, got, want) in [("y", &y, want_y), ("dx", gx, want_gx), ("dw", gw, want_gw)] {
            let d = rel_l2(got, &want.to_dtype(DType::F32).unwrap());
            assert!(d < 1e-6, "({m}, {n}, {k}) {name}: {d:.2e} from the product of rounded operands");
        }
        // And not the f32 product: the rounding happened.
        assert!(rel_l2(&y, &x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap()) > 1e-3);
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.iter().product()).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The fused attention's two bf16 products, each against a composition of candle ops on the
/// same rounded operands: the weights it applied against softmax(round(q') . round(k)^T) to
/// 1e-5 (f32 softmaxes differ in their last bits), and its output against round(alpha) .
/// round(v), alpha being the kernel's own weights, to 1e-6. Skipping the rounding of q', k, alpha
/// or v moves these by ~1e-3.
#[test]
fn bf16_attention_rounds_each_products_operands() {
    use thermoformer::kernels::attention::causal_attention_with_weights_in;
    for (seed, (b, t, h, d)) in [(3, 17, 3, 16), (1, 37, 1, 16), (2, 9, 2, 8)].into_iter().enumerate() {
        let c = h * d;
        let qkv = randn(&[b, t, 3 * c], seed as u64);
        let scale = Tensor::new(&[0.3f32, 0.5, 0.7][..h], &Device::Cpu).unwrap();
        let (y, alpha) = causal_attention_with_weights_in(&qkv, &scale, thermoformer::kernels::attention::Heads::mha(h), Some(Kernel::best())).unwrap();
        let parts = qkv.reshape((b, t, 3, h, d)).unwrap();
        let part = |i: usize| parts.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = round(&part(0).broadcast_mul(&scale.reshape((1, h, 1, 1)).unwrap()).unwrap());
        let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let s = q.matmul(&round(&part(1)).t().unwrap()).unwrap().broadcast_add(&mask).unwrap();
        let want_alpha = candle_nn::ops::softmax(&s, candle_core::D::Minus1).unwrap();
        let da = rel_l2(&alpha, &want_alpha);
        assert!(da < 1e-5, "({b}, {t}, {h}, {d}): bf16 attention weights {da:.2e} from softmax of the rounded q'.k");
        let want_y = round(&alpha).matmul(&round(&part(2))).unwrap().transpose(1, 2).unwrap().reshape((b, t, c)).unwrap();
        let dy = rel_l2(&y, &want_y);
        assert!(dy < 1e-6, "({b}, {t}, {h}, {d}): bf16 attention output {dy:.2e} from round(alpha) . round(v)");
        let (y32, alpha32) = causal_attention_with_weights_in(&qkv, &scale, thermoformer::kernels::attention::Heads::mha(h), None).unwrap();
        assert!(rel_l2(&alpha32, &want_alpha) > 1e-3 && rel_l2(&y32, &want_y) > 1e-3, "f32 is as close: a missing rounding would pass");
    }
}

/// Logits and gradients of the whole fused bf16 model against the composed path with every
/// product's operands rounded to bf16. The two differ by more than their sums' order: their
/// GELUs (a polynomial erf against candle's) differ by ~1e-7, and each such difference that
/// straddles a bf16 rounding boundary moves a rounded activation by one bf16 ulp (2^-8), so the
/// bar is 1e-3; bf16 is still ten times nearer its reference than to f32.
#[test]
fn fused_bf16_matches_the_rounded_composed_reference() {
    for cfg in configs() {
        let tensors = Params::init(&cfg, 0.2, 3, &Device::Cpu).unwrap().0.tensors();
        let fused = pass(&cfg, &tensors, Kernels::Fused, Precision::Bf16);
        let reference = pass(&cfg, &tensors, Kernels::Composed, Precision::Bf16);
        let f32s = pass(&cfg, &tensors, Kernels::Fused, Precision::F32);
        let to_ref = rel_l2(&fused[0].1, &reference[0].1);
        let to_f32 = rel_l2(&fused[0].1, &f32s[0].1);
        println!("{:?}: logits: bf16 to its reference {to_ref:.2e}, to f32 {to_f32:.2e}", cfg.positions);
        assert!(to_ref < 1e-3, "{:?}: fused bf16 logits differ from the rounded reference by {to_ref:.2e}", cfg.positions);
        assert!(to_f32 > 10.0 * to_ref, "{:?}: bf16 logits are as close to f32 ({to_f32:.2e}) as to bf16's reference", cfg.positions);
        for ((name, g), ((_, r), (_, f))) in fused.iter().zip(reference.iter().zip(&f32s)).skip(2) {
            let (to_ref, to_f32) = (rel_l2(g, r), rel_l2(g, f));
            println!("  {name}: to reference {to_ref:.2e}, to f32 {to_f32:.2e}");
            // Gradients: the fused path rounds dy in its backward products, where the reference's
            // autodiff rounds other intermediates, so they agree to a few bf16 ulps (2^-8) in
            // norm; d ln beta, a sum of cancelling terms, only to 10% (measured 4.7e-2; in
            // f32 it is 2.2e-1 from bf16's).
            let bar = if name.ends_with("log_beta") { 0.1 } else { 1.5e-2 };
            assert!(to_ref < bar, "{name}: bf16 gradient {to_ref:.2e} from the rounded reference (bar {bar:.0e})");
            if !name.ends_with("log_beta") {
                assert!(to_f32 < 3e-2, "{name}: bf16 gradient {to_f32:.2e} from f32");
            }
        }
    }
}

/// One bf16 training run per bf16 kernel this CPU has (`THERMOFORMER_BF16_KERNEL`): the same
/// weights and optimizer state to the bit, and not those of f32. Heads 32 wide over 64
/// positions and batches of 12: at the tiny shape of the other tests (8-wide heads, 16
/// positions, batches of 4) a pair order reversed in attention's tiles changed no bit.
#[test]
fn bf16_training_is_bit_identical_across_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(dir.path(), 20_000);
    let run = |name: &str, precision: &str, kernel: Option<Kernel>| -> (Vec<u8>, Vec<u8>) {
        let out = dir.path().join(name);
        let mut cmd = common::thermoformer();
        cmd.args(["train", "--corpus", corpus.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "4"]);
        cmd.args(["--layers", "1", "--heads", "2", "--d-model", "64", "--context", "64", "--batch-size", "12"]);
        cmd.args(["--eval-every", "2", "--eval-batches", "2", "--sample-tokens", "0", "--no-progress"]);
        cmd.args(["--precision", precision]);
        if let Some(k) = kernel {
            cmd.env("THERMOFORMER_BF16_KERNEL", k.name());
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        (std::fs::read(out.join("model.safetensors")).unwrap(), std::fs::read(out.join("optimizer.safetensors")).unwrap())
    };
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
    if !Kernel::Avx512Bf16.available() {
        println!("note: this CPU has no AVX512-BF16: only the emulated kernels were compared");
    }
    let first = run(kernels[0].name(), "bf16", Some(kernels[0]));
    for &k in &kernels[1..] {
        assert!(run(k.name(), "bf16", Some(k)) == first, "bf16 training with the {} kernel differs from {}", k.name(), kernels[0].name());
    }
    assert!(run("f32", "f32", None).0 != first.0, "bf16 training gave f32's weights");
}

/// A bf16 kernel the environment names but the CPU lacks, or no kernel at all, is a one-line
/// usage error (exit 2) before any work, for every command that takes --precision bf16; f32
/// runs never read the variable.
#[test]
fn an_unusable_bf16_kernel_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::trained(dir.path());
    let corpus = common::small_corpus(dir.path(), 4000);
    let out = dir.path().join("again");
    let missing = Kernel::ALL.into_iter().find(|k| !k.available());
    let mut cases = vec![("bogus", "names no bf16 kernel")];
    if let Some(k) = missing {
        cases.push((k.name(), "which this CPU lacks"));
    }
    if !Kernel::Amx.available() {
        cases.push(("amx", "which this CPU lacks"));
    }
    for (value, needle) in cases {
        let mut train = common::tiny_train_flags(corpus.to_str().unwrap(), out.to_str().unwrap());
        train.extend(["--precision", "bf16", "--overwrite"]);
        let commands: Vec<Vec<&str>> = vec![
            train,
            vec!["score", "--checkpoint", run.to_str().unwrap(), "--text", "To be", "--precision", "bf16"],
            vec!["generate", "--checkpoint", run.to_str().unwrap(), "--tokens", "5", "--precision", "bf16"],
            vec!["bench", "--precision", "bf16", "--iters", "1"],
        ];
        for args in commands {
            let o = common::thermoformer().env("THERMOFORMER_BF16_KERNEL", value).args(&args).output().unwrap();
            common::assert_clean_error(&o, 2, needle);
        }
        let o = common::thermoformer()
            .env("THERMOFORMER_BF16_KERNEL", value)
            .args(["score", "--checkpoint", run.to_str().unwrap(), "--text", "To be"])
            .output()
            .unwrap();
        assert!(o.status.success(), "f32 scoring read THERMOFORMER_BF16_KERNEL: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(!out.join("model.safetensors").exists(), "the refused training run wrote a checkpoint");
}

/// AMX's tiles (`THERMOFORMER_BF16_KERNEL=amx`, by name only) run the whole model: a training
/// run ends near the reproducible bf16 run's weights but not on them (AMX accumulates its own
/// way, so equal bits would mean the kernel never ran), and its energies match the reproducible
/// kernel's to well within bf16's own error. Says so where the CPU has no AMX.
#[test]
fn amx_runs_the_model_near_the_reproducible_bf16() {
    if !Kernel::Amx.available() {
        println!("note: this CPU (or OS) has no AMX-BF16 tiles: the AMX kernel is not tested here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::small_corpus(dir.path(), 20_000);
    let train = |name: &str, kernel: &str| -> std::path::PathBuf {
        let out = dir.path().join(name);
        let o = common::thermoformer()
            .env("THERMOFORMER_BF16_KERNEL", kernel)
            .args(common::tiny_train_flags(corpus.to_str().unwrap(), out.to_str().unwrap()))
            .args(["--precision", "bf16"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let weights = |run: &std::path::Path| -> Vec<(String, Tensor)> {
        let mut w: Vec<(String, Tensor)> = candle_core::safetensors::load(run.join("model.safetensors"), &Device::Cpu).unwrap().into_iter().collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    let (reference, amx) = (train("auto", "auto"), train("amx", "amx"));
    let (wr, wa) = (weights(&reference), weights(&amx));
    let mut worst = 0f64;
    let mut identical = true;
    for ((name, r), (_, a)) in wr.iter().zip(&wa) {
        let d = rel_l2(a, r);
        identical &= common::flat(a) == common::flat(r);
        println!("  {name}: amx against the reproducible bf16 run {d:.2e}");
        worst = worst.max(d);
    }
    assert!(!identical, "the AMX run gave the reproducible kernel's bits: AMX never ran");
    assert!(worst < 1e-4, "AMX training drifted {worst:.2e} from the reproducible bf16 run");
    let energy = |kernel: &str| -> f64 {
        let o = common::thermoformer()
            .env("THERMOFORMER_BF16_KERNEL", kernel)
            .args(["score", "--checkpoint", reference.to_str().unwrap(), "--text", "To be, or not to be: that is the question.", "--precision", "bf16", "--format", "jsonl"])
            .output()
            .unwrap();
        assert!(o.status.success(), "score with {kernel}: {}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["energy"].as_f64().unwrap_or_else(|| panic!("no energy in {v}"))
    };
    let (e_ref, e_amx) = (energy("auto"), energy("amx"));
    println!("  energy: reproducible bf16 {e_ref:.6}, amx {e_amx:.6}");
    assert!(((e_amx - e_ref) / e_ref).abs() < 1e-5, "AMX scoring {e_amx} against {e_ref}");
}

/// `bench --json` names the bf16 kernel its bf16 rows ran on (the one the environment forces),
/// and null when it ran no bf16 row.
#[test]
fn bench_json_names_the_bf16_kernel() {
    let forced = [Kernel::Avx2, Kernel::Scalar].into_iter().find(|k| k.available()).unwrap();
    let bench = |kernel: &str, precision: &str| -> serde_json::Value {
        let o = common::thermoformer()
            .env("THERMOFORMER_BF16_KERNEL", kernel)
            .args(["bench", "--shape", "small", "--work", "generate", "--iters", "1", "--precision", precision, "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "bench: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let v = bench(forced.name(), "f32,bf16");
    assert_eq!(v["bf16_kernel"], forced.name(), "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v}");
    assert!(bench(forced.name(), "f32")["bf16_kernel"].is_null());
}
