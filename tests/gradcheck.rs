//! Gradient check: central finite differences in f64 against candle's autodiff, for every kind of
//! parameter (embeddings, attention projections, the learned ln beta, LayerNorm gains, MLP), with
//! and without label smoothing.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use thermoformer::model::loss;
use thermoformer::model::params::Params;
use thermoformer::ModelConfig;

fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// A tiny model with generic f64 weights: random matrices, gains and temperatures away from 1.
fn weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
    let (params, _) = Params::init(cfg, 0.3, 1, &Device::Cpu).unwrap();
    let mut tensors = params.tensors();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort(); // a fixed jitter per tensor, whatever the map's order
    for (k, name) in names.iter().enumerate() {
        let t = tensors.get_mut(name).unwrap();
        let t64 = t.to_dtype(DType::F64).unwrap();
        *t = if name.ends_with("log_beta") || name.contains("ln") {
            let jitter = Tensor::from_vec(noise(t.elem_count(), k as u64), t.shape(), &Device::Cpu).unwrap();
            (t64 + (jitter * 0.3).unwrap()).unwrap()
        } else {
            t64
        };
    }
    tensors
}

fn batch(cfg: &ModelConfig) -> (Tensor, Tensor) {
    let (b, t) = (2, cfg.context);
    let ids: Vec<u32> = noise(b * t, 77).iter().map(|x| ((x + 1.0) * 0.5 * (cfg.vocab_size - 1) as f64) as u32).collect();
    let targets: Vec<u32> = noise(b * t, 78).iter().map(|x| ((x + 1.0) * 0.5 * (cfg.vocab_size - 1) as f64) as u32).collect();
    (Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(), Tensor::from_vec(targets, b * t, &Device::Cpu).unwrap())
}

fn loss_of(cfg: &ModelConfig, tensors: &HashMap<String, Tensor>, eps: f64) -> (Params, Tensor) {
    let (params, model) = Params::from_tensors_as(cfg, tensors.clone(), DType::F64, &Device::Cpu).unwrap();
    let (x, y) = batch(cfg);
    let logits = model.forward(&x).unwrap().flatten_to(1).unwrap();
    (params, loss::cross_entropy(&logits, &y, eps).unwrap().loss)
}

fn check(eps: f64) {
    let cfg = ModelConfig { context: 6, n_layer: 2, n_head: 2, d_model: 8, learn_temperature: true, ..ModelConfig::nano_cpu(11) };
    let tensors = weights(&cfg);
    let (params, loss) = loss_of(&cfg, &tensors, eps);
    let grads = loss.backward().unwrap();
    let h = 1e-5; // balances truncation (h^2) against f64 round-off in the loss (~1e-14 / h)
    let mut checked = 0;
    let mut worst: (f64, String) = (0.0, String::new());
    for p in params.trainable() {
        let g = grads.get(p.var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {}", p.name));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = tensors[&p.name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = base.len();
        // A handful of coordinates spread over the tensor.
        for &i in &[0, n / 3, n / 2, (2 * n) / 3, n - 1] {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut t = tensors.clone();
                t.insert(p.name.clone(), Tensor::from_vec(v, tensors[&p.name].shape(), &Device::Cpu).unwrap());
                loss_of(&cfg, &t, eps).1.to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            // Central differences are good to about 1e-9 absolute here (h^2 truncation and f64
            // round-off of the loss); a wrong gradient is off by its own size.
            let diff = (fd - g[i]).abs();
            if diff > worst.0 {
                worst = (diff, format!("{}[{i}]: autodiff {:.6e} vs finite difference {fd:.6e}", p.name, g[i]));
            }
            assert!(diff < 1e-8 + 1e-5 * fd.abs().max(g[i].abs()), "eps {eps}: {}[{i}]: autodiff {} vs finite difference {fd}", p.name, g[i]);
            checked += 1;
        }
    }
    let kinds = ["tok_emb", "pos_emb", "attn.qkv", "attn.proj", "attn.log_beta", "ln1", "ln2", "ln_f", "mlp.fc", "mlp.proj"];
    for k in kinds {
        assert!(params.trainable().iter().any(|p| p.name.contains(k)), "{k} is checked");
    }
    println!("eps {eps}: {checked} coordinates checked, largest |autodiff - finite difference| {:.2e} at {}", worst.0, worst.1);
}

#[test]
fn autodiff_matches_finite_differences_without_smoothing() {
    check(0.0);
}

#[test]
fn autodiff_matches_finite_differences_with_label_smoothing() {
    check(0.1);
}
