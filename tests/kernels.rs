//! The fused kernels against the composed reference they replace: forward values and every
//! parameter's gradient agree to 1e-5 relative in f32 (2e-5 on the recipe shape), on shapes that exercise the vector
//! remainders (context and widths that are not multiples of 16) and learned temperatures.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use thermoformer::kernels::{self, Kernels};
use thermoformer::model::loss;
use thermoformer::model::params::Params;
use thermoformer::ModelConfig;

mod common;

/// Largest |a - b| relative to the largest |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (common::flat(a), common::flat(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let normal = Normal::new(0.0, std).unwrap();
    let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Generic weights: larger than the init so attention is far from uniform, and temperatures
/// away from 1.
fn weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
    let (params, _) = Params::init(cfg, 0.2, 3, &Device::Cpu).unwrap();
    let mut tensors = params.tensors();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    for (k, name) in names.iter().enumerate() {
        let t = tensors.get_mut(name).unwrap();
        if name.ends_with("log_beta") || name.contains("ln") || name.contains("norm") {
            *t = (&*t + randn(t.dims(), 0.4, k as u64)).unwrap();
        }
    }
    tensors
}

/// `tol`: the largest relative difference from the composed f32 reference.
fn compare_model(cfg: &ModelConfig, batch: usize, eps: f64, tol: f32) {
    let tensors = weights(cfg);
    let (b, t) = (batch, cfg.context);
    let ids = common::random_ids(b, t, cfg.vocab_size - 1, cfg.vocab_size as u32 - 1, 5);
    let targets = common::random_ids(b, t, cfg.vocab_size - 1, 0, 6).flatten_all().unwrap();
    // Fused f32, composed f32 (the reference), and composed f64 (to judge the reference's own
    // round-off where a gradient is a sum of many cancelling terms, as d ln beta is).
    let mut out = Vec::new();
    for (k, dtype) in [(Kernels::Fused, DType::F32), (Kernels::Composed, DType::F32), (Kernels::Composed, DType::F64)] {
        let (params, mut model) = Params::from_tensors_as(cfg, tensors.clone(), dtype, &Device::Cpu).unwrap();
        model.set_kernels(k);
        let logits = model.forward(&ids).unwrap().flatten_to(1).unwrap();
        let l = loss::cross_entropy_with(&logits, &targets, eps, k).unwrap();
        let grads = l.loss.backward().unwrap();
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let mut named = vec![("logits".to_string(), f32s(&logits)), ("loss".into(), f32s(&l.loss)), ("ce".into(), f32s(&l.ce)), ("energies".into(), f32s(&l.energies))];
        for p in params.trainable() {
            let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("{k:?}: no gradient for {}", p.name));
            named.push((p.name.clone(), f32s(g)));
        }
        out.push(named);
    }
    let (fused, composed, exact) = (&out[0], &out[1], &out[2]);
    assert_eq!(fused.len(), composed.len());
    for ((name, f), ((_, c), (_, e))) in fused.iter().zip(composed.iter().zip(exact)) {
        let d = rel_diff(f, c);
        // Within 1e-5 of the reference, or, where the f32 reference itself is that far from the
        // f64 value, no further from the f64 value than the reference is.
        // Only d ln beta, a sum of many cancelling terms whose f32 reference is itself that far
        // from f64 (measured up to 2.1e-5), may instead be judged against f64; every other tensor
        // must match the reference outright.
        let reference_error = rel_diff(c, e);
        let fused_error = rel_diff(f, e);
        let cancelling = name.ends_with("log_beta");
        assert!(
            d < tol || (cancelling && fused_error <= 2.0 * reference_error),
            "eps {eps}: {name}: fused differs from composed by {d:.2e} (relative, bar {tol:.0e}); from f64 by {fused_error:.2e}, composed from f64 by {reference_error:.2e}"
        );
        if name.contains('.') {
            assert!(common::flat(f).iter().any(|v| *v != 0.0), "{name} gets a gradient");
        }
    }
    assert!(fused.iter().any(|(n, _)| n.ends_with("log_beta")), "temperatures are checked");
}

#[test]
fn fused_model_matches_composed_forward_and_gradients() {
    let cfg = ModelConfig { context: 19, n_layer: 2, n_head: 3, d_model: 48, learn_temperature: true, ..ModelConfig::nano_cpu(37) };
    compare_model(&cfg, 3, 0.0, 1e-5);
    compare_model(&cfg, 3, 0.1, 1e-5);
}

#[test]
fn fused_model_matches_composed_with_rotary_positions() {
    let cfg = ModelConfig { positions: thermoformer::config::Positions::Rope, context: 19, n_layer: 2, n_head: 3, d_model: 48, learn_temperature: true, ..ModelConfig::nano_cpu(37) };
    compare_model(&cfg, 3, 0.1, 1e-5);
}

#[test]
fn fused_model_matches_composed_on_the_recipe_shape() {
    // At 4 layers x 128 wide over 64 positions the f32 reference's own gradients are 1.2e-5 from
    // f64 (measured: the first block's qkv weights, the embeddings), and the fused ones 1.1e-5 from
    // it at most.
    let cfg = ModelConfig { learn_temperature: true, ..ModelConfig::nano_cpu(66) };
    compare_model(&cfg, 2, 0.1, 2e-5);
}

#[test]
fn fused_layer_norm_matches_composed() {
    let x = randn(&[7, 5, 37], 2.0, 1);
    let w = randn(&[37], 1.0, 2);
    let dy = randn(&[7, 5, 37], 1.0, 3);
    let run = |fused: bool| {
        let (xv, wv) = (candle_core::Var::from_tensor(&x).unwrap(), candle_core::Var::from_tensor(&w).unwrap());
        let y = if fused {
            kernels::layer_norm::layer_norm(xv.as_tensor(), wv.as_tensor(), 1e-5).unwrap()
        } else {
            let (x, w) = (xv.as_tensor(), wv.as_tensor());
            let c = x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(w).unwrap()
        };
        let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(xv.as_tensor()).unwrap().clone(), g.get(wv.as_tensor()).unwrap().clone())
    };
    let (f, c) = (run(true), run(false));
    assert!(rel_diff(&f.0, &c.0) < 1e-5, "y");
    assert!(rel_diff(&f.1, &c.1) < 1e-5, "dx {}", rel_diff(&f.1, &c.1));
    assert!(rel_diff(&f.2, &c.2) < 1e-5, "dw {}", rel_diff(&f.2, &c.2));
}

#[test]
fn fused_attention_is_causal_and_its_rows_are_averages_of_values() {
    // With every key equal, each query's weights are uniform over j <= i, so y_i is the running
    // mean of the values: an independent check of the masking and the normalisation.
    let (b, t, h, d) = (2, 21, 2, 8);
    let c = h * d;
    let v = randn(&[b, t, c], 1.0, 4);
    let q = randn(&[b, t, c], 1.0, 5);
    let k = Tensor::ones((b, t, c), DType::F32, &Device::Cpu).unwrap();
    let qkv = Tensor::cat(&[&q, &k, &v], 2).unwrap().contiguous().unwrap();
    let scale = Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap(); // beta = 0: uniform weights
    let y = kernels::attention::causal_attention(&qkv, &scale, h).unwrap();
    let vv = common::flat(&v);
    let yv = common::flat(&y);
    for bi in 0..b {
        for i in 0..t {
            for ch in 0..c {
                let mean = (0..=i).map(|j| vv[(bi * t + j) * c + ch]).sum::<f32>() / (i + 1) as f32;
                let got = yv[(bi * t + i) * c + ch];
                assert!((got - mean).abs() < 1e-5, "y[{bi},{i},{ch}] = {got}, running mean {mean}");
            }
        }
    }
}

#[test]
fn the_weights_the_fused_attention_hands_back_are_the_ones_it_applied() {
    let (b, t, h, d) = (2, 19, 3, 8);
    let c = h * d;
    let qkv = randn(&[b, t, 3 * c], 1.0, 11);
    let scale = Tensor::new(&[0.9f32, 0.35, 1.6], &Device::Cpu).unwrap();
    let y = kernels::attention::causal_attention(&qkv, &scale, h).unwrap();
    let (y_probe, alpha) = kernels::attention::causal_attention_with_weights(&qkv, &scale, h).unwrap();
    assert_eq!(common::flat(&y_probe), common::flat(&y), "the probe runs the training forward, bit for bit");
    assert_eq!(alpha.dims(), &[b, h, t, t]);
    // y_i = sum_j alpha_ij v_j with the handed-back weights, recomputed here.
    let v = qkv.narrow(2, 2 * c, c).unwrap().reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap(); // (B, H, T, D)
    let y_again = alpha.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, c)).unwrap();
    assert!(rel_diff(&y_again, &y) < 1e-5, "{}", rel_diff(&y_again, &y));
    // And they are softmax(scale_h q.k) over j <= i, from a composition of candle primitives.
    let part = |i: usize| qkv.narrow(2, i * c, c).unwrap().reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let (q, k) = (part(0), part(1));
    let logits = q.matmul(&k.t().unwrap()).unwrap().broadcast_mul(&scale.reshape((1, h, 1, 1)).unwrap()).unwrap();
    let mask: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    let logits = logits.broadcast_add(&Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap()).unwrap();
    let want = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
    assert!(rel_diff(&alpha, &want) < 1e-5, "{}", rel_diff(&alpha, &want));
    // Forward-only: no graph reaches its inputs.
    let var = candle_core::Var::from_tensor(&qkv).unwrap();
    let (y, _) = kernels::attention::causal_attention_with_weights(var.as_tensor(), &scale, h).unwrap();
    assert!(y.sum_all().unwrap().backward().unwrap().get(var.as_tensor()).is_none());
}

#[test]
fn fused_cross_entropy_rejects_targets_outside_the_vocabulary() {
    let logits = randn(&[3, 5], 1.0, 7);
    let targets = Tensor::new(&[0u32, 5, 1], &Device::Cpu).unwrap();
    let err = kernels::cross_entropy::cross_entropy_rows(&logits, &targets, 0.0).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}


#[test]
fn fused_mlp_gives_the_bits_of_its_two_products_and_gelu() {
    // The one-op MLP against the same computation as three ops (linear, GELU, linear), each
    // with candle's backward between them: forward values and all three gradients equal bit for
    // bit. Shapes: rows enough for several blocks of rows, an odd width, a row count that leaves
    // a short last block; and few rows with a wide hidden layer, which the product splits by
    // columns; both GELUs.
    for (rows, c, f, c_out, tanh) in [(203, 37, 150, 37, false), (203, 37, 150, 37, true), (3, 512, 2048, 40, false)] {
        let x = candle_core::Var::from_tensor(&randn(&[1, rows, c], 1.0, 1)).unwrap();
        let w_fc = candle_core::Var::from_tensor(&randn(&[f, c], 0.3, 2)).unwrap();
        let w_proj = candle_core::Var::from_tensor(&randn(&[c_out, f], 0.3, 3)).unwrap();
        let dy = randn(&[1, rows, c_out], 1.0, 4);
        let fused = kernels::mlp::gelu_mlp(&x, &w_fc, &w_proj, tanh).unwrap();
        let h = kernels::linear::linear(&x, &w_fc).unwrap();
        let g = if tanh { kernels::gelu::gelu_tanh(&h) } else { kernels::gelu::gelu(&h) }.unwrap();
        let ops = kernels::linear::linear(&g, &w_proj).unwrap();
        let what = format!("{rows} x {c} -> {f} -> {c_out}, tanh {tanh}");
        assert_eq!(common::flat(&fused), common::flat(&ops), "{what}: forward");
        let (gf, go) = ((fused * &dy).unwrap().sum_all().unwrap().backward().unwrap(), (ops * &dy).unwrap().sum_all().unwrap().backward().unwrap());
        for (name, v) in [("x", &x), ("w_fc", &w_fc), ("w_proj", &w_proj)] {
            let (a, b) = (gf.get(v.as_tensor()).unwrap(), go.get(v.as_tensor()).unwrap());
            assert_eq!(common::flat(a), common::flat(b), "{what}: d {name}");
        }
    }
}

#[test]
fn matvec_matches_matmul() {
    // Feature counts that leave remainders of 4 rows and of 64-feature work items, and widths
    // that leave remainders of 16 lanes.
    for (n, k, m) in [(1, 37, 131), (3, 128, 66), (4, 200, 9), (2, 16, 4)] {
        let x = randn(&[n, k], 1.0, n as u64);
        let w = randn(&[m, k], 1.0, k as u64);
        let got = kernels::matvec::matvec(&x, &w).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        assert_eq!(got.dims(), &[n, m]);
        assert!(rel_diff(&got, &want) < 1e-6, "({n}, {k}) x ({m}, {k})^T differs by {}", rel_diff(&got, &want));
    }
    assert!(kernels::matvec::matvec(&randn(&[5, 8], 1.0, 0), &randn(&[3, 8], 1.0, 0)).is_err(), "at most 4 rows");
}

#[test]
fn fused_model_matches_composed_with_gpt2s_biases_tanh_gelu_and_untied_head() {
    // What imported GPT-2 models run: every Linear and LayerNorm with a bias, the tanh GELU, an
    // LM head of its own and another LayerNorm epsilon, on both paths, gradients included.
    let cfg = ModelConfig {
        context: 19,
        n_layer: 2,
        n_head: 3,
        d_model: 48,
        learn_temperature: true,
        bias: true,
        activation: thermoformer::config::Activation::GeluTanh,
        tied_head: false,
        ln_eps: 1e-6,
        ..ModelConfig::nano_cpu(37)
    };
    compare_model(&cfg, 3, 0.1, 1e-5);
}

/// The families' shapes on both paths, gradients included: the fused RMSNorm, SiLU-and-multiply,
/// grouped kv heads through the fused attention, q/k norms, partial rotary and the parallel
/// residual against their composed references.
/// Small shapes of every family: Llama (RMSNorm, SwiGLU, rotary, grouped heads, scaled rotary
/// frequencies, untied head), Qwen2 (q|k|v biases), Qwen3 (one key/value head, wider heads,
/// query and key norms), Pythia (biases, partial rotary, parallel residual), GPT-Neo (biases,
/// unscaled scores, a local window).
fn family_configs(base: &ModelConfig) -> Vec<(&'static str, ModelConfig)> {
    use thermoformer::config::{MlpKind, Norm, Positions, RopeScaling};
    let llama = ModelConfig {
        positions: Positions::Rope,
        norm: Norm::RmsNorm,
        mlp: MlpKind::SwiGlu,
        d_ff: Some(40),
        n_kv_head: Some(2),
        rope_theta: 500.0,
        rope_scaling: Some(RopeScaling { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8 }),
        tied_head: false,
        ..base.clone()
    };
    let qwen2 = ModelConfig { qkv_bias: Some(true), tied_head: true, ..llama.clone() };
    let qwen3 = ModelConfig { n_kv_head: Some(1), d_head: Some(10), qk_norm: true, ..llama.clone() };
    let pythia = ModelConfig { positions: Positions::Rope, bias: true, rope_dims: Some(6), parallel_residual: true, tied_head: false, ..base.clone() };
    let neo = ModelConfig { bias: true, qkv_bias: Some(false), score_scale: Some(1.0), windows: vec![None, Some(5)], ..base.clone() };
    vec![("llama", llama), ("qwen2", qwen2), ("qwen3", qwen3), ("pythia", pythia), ("gpt-neo", neo)]
}

#[test]
fn fused_model_matches_composed_on_every_familys_shape() {
    let base = ModelConfig { context: 19, n_layer: 2, n_head: 4, d_model: 48, learn_temperature: true, ..ModelConfig::nano_cpu(37) };
    for (name, cfg) in family_configs(&base) {
        cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("{name}");
        compare_model(&cfg, 3, 0.1, 1e-5);
    }
}

#[test]
fn fused_rms_norm_and_silu_mul_match_composed() {
    use candle_core::Var;
    let x = Var::from_tensor(&randn(&[5, 7, 24], 1.5, 1)).unwrap();
    let w = Var::from_tensor(&(randn(&[24], 0.3, 2) + 1.0).unwrap()).unwrap();
    let dy = randn(&[5, 7, 24], 1.0, 3);
    let fused = kernels::layer_norm::rms_norm(&x, &w, 1e-5).unwrap();
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let composed = x.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&w).unwrap();
    assert!(rel_diff(&fused, &composed) < 1e-6);
    let gf = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (composed * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&x, &w] {
        let d = rel_diff(gf.get(v).unwrap(), gc.get(v).unwrap());
        assert!(d < 1e-5, "rms_norm gradient differs by {d}");
    }

    let h = Var::from_tensor(&randn(&[5, 7, 2 * 13], 2.0, 4)).unwrap();
    let dy = randn(&[5, 7, 13], 1.0, 5);
    let fused = kernels::swiglu::silu_mul(&h).unwrap();
    let (gate, up) = (h.narrow(2, 0, 13).unwrap(), h.narrow(2, 13, 13).unwrap());
    let composed = candle_nn::ops::silu(&gate).unwrap().mul(&up).unwrap();
    assert!(rel_diff(&fused, &composed) < 1e-6);
    let gf = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (composed * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let d = rel_diff(gf.get(&h).unwrap(), gc.get(&h).unwrap());
    assert!(d < 1e-5, "silu_mul gradient differs by {d}");
}

#[test]
#[allow(clippy::needless_range_loop)] // the definition, index by index
fn cached_attention_matches_the_definition_on_strided_grouped_caches() {
    // Queries (B, H, Tq, D) over keys and values (B, K, Tk, D) that are views of larger buffers
    // (a cache holding more positions than are filled: strided along T), with H = 6 query heads
    // on K = 2 key/value heads (query head h reads key head h / 3), Tk not a multiple of 4 or
    // 16, D not a multiple of 16, and a different factor per head. The reference is the
    // definition in f64, head by head.
    let (b, h, kv, tq, tk, d, cap) = (2, 6, 2, 1, 23, 20, 40);
    let q = randn(&[b, h, tq, d], 1.0, 1);
    let kbuf = randn(&[b, kv, cap, d], 1.0, 2);
    let vbuf = randn(&[b, kv, cap, d], 1.0, 3);
    let (k, v) = (kbuf.narrow(2, 0, tk).unwrap(), vbuf.narrow(2, 0, tk).unwrap());
    assert!(!k.is_contiguous());
    let scale = Tensor::new(&[0.3f32, 0.5, 0.9, 1.4, 0.2, 2.0], &Device::Cpu).unwrap();
    let got = kernels::decode::cached_attention(&q, &k, &v, &scale).unwrap();
    assert_eq!(got.dims(), &[b, h, tq, d]);
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (kv4, vv) = (k.to_dtype(DType::F64).unwrap(), v.to_dtype(DType::F64).unwrap());
    let q4: Vec<Vec<Vec<Vec<f32>>>> = (0..b).map(|i| q.get(i).unwrap().to_vec3::<f32>().unwrap()).collect();
    let k4: Vec<Vec<Vec<Vec<f64>>>> = (0..b).map(|i| kv4.get(i).unwrap().to_vec3::<f64>().unwrap()).collect();
    let v4: Vec<Vec<Vec<Vec<f64>>>> = (0..b).map(|i| vv.get(i).unwrap().to_vec3::<f64>().unwrap()).collect();
    let sc = scale.to_vec1::<f32>().unwrap();
    let mut worst = 0f64;
    for bi in 0..b {
        for hi in 0..h {
            let g = hi / (h / kv);
            let s: Vec<f64> = (0..tk).map(|j| (0..d).map(|x| sc[hi] as f64 * q4[bi][hi][0][x] as f64 * k4[bi][g][j][x]).sum()).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for x in 0..d {
                let want: f64 = (0..tk).map(|j| (s[j] - m).exp() / z * v4[bi][g][j][x]).sum();
                let at = ((bi * h + hi) * tq) * d + x;
                worst = worst.max((got[at] as f64 - want).abs());
            }
        }
    }
    assert!(worst < 1e-5, "cached attention differs from the definition by {worst}");
    // The same keys and values laid out with positions innermost (unit stride along T, not D):
    // copied into rows first, they give the same bits.
    let cols = |x: &Tensor| x.transpose(2, 3).unwrap().contiguous().unwrap().transpose(2, 3).unwrap();
    assert_ne!(cols(&k).stride()[3], 1);
    let again = kernels::decode::cached_attention(&q, &cols(&k), &cols(&v), &scale).unwrap();
    assert_eq!(again.flatten_all().unwrap().to_vec1::<f32>().unwrap(), got, "another layout, other numbers");
    // Shapes that do not fit are refused, not read out of bounds.
    assert!(kernels::decode::cached_attention(&q, &k.narrow(3, 0, d - 1).unwrap(), &v, &scale).is_err());
    assert!(kernels::decode::cached_attention(&q, &k, &v, &scale.narrow(0, 0, 5).unwrap()).is_err());
}

#[test]
fn par_map_f64_puts_each_value_at_its_index() {
    // Long enough for the pool (the short path is a plain map), and not a multiple of the
    // thread count.
    for n in [5, 10_007] {
        let f = |i: usize| (i as f64 * 0.37).sin() + i as f64;
        let got = kernels::par_map_f64(n, f);
        assert_eq!(got.len(), n);
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v.to_bits(), f(i).to_bits(), "index {i}");
        }
    }
}

#[test]
fn a_forward_only_model_gives_the_trainable_models_bits() {
    // A model whose weights are plain tensors runs each block's norms inside the products after
    // them and its residual adds inside the products before them (nothing kept for a backward);
    // the trainable model runs the ops that training differentiates. Both give the same logits,
    // bit for bit, in f32 and in bf16: GPT-2's shape with rows enough for several blocks and a
    // width that is not a multiple of 16, and every family's (RMSNorm and query/key norms
    // included; biases and the parallel residual take the composed path).
    let base = ModelConfig { context: 40, n_layer: 2, n_head: 4, d_model: 48, learn_temperature: true, ..ModelConfig::nano_cpu(37) };
    for (name, cfg) in [("gpt", base.clone())].into_iter().chain(family_configs(&base)) {
        let tensors = weights(&cfg);
        let ids = common::random_ids(9, cfg.context, cfg.vocab_size - 1, cfg.vocab_size as u32 - 1, 5);
        for precision in [thermoformer::config::Precision::F32, thermoformer::config::Precision::Bf16] {
            let (params, mut trainable) = Params::from_tensors(&cfg, tensors.clone(), &Device::Cpu).unwrap();
            let mut forward_only = params.detached_model(&cfg).unwrap();
            trainable.set_precision(precision);
            forward_only.set_precision(precision);
            let (a, b) = (common::flat(&trainable.forward(&ids).unwrap()), common::flat(&forward_only.forward(&ids).unwrap()));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}, {precision:?}: the forward-only logits differ");
        }
    }
}
