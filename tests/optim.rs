//! AdamW, the schedule and clipping against values worked out by hand from PyTorch's formulas.

use candle_core::{Device, Tensor, Var};
use thermoformer::kernels::Kernels;
use thermoformer::train::optim::{clip_scale, grad_norm, lr_at, AdamW, AdamWConfig};
use thermoformer::model::params::Param;

/// With a constant gradient g, Adam's bias-corrected step is exactly lr * sign(g) at every step
/// (m_hat = g, v_hat = g^2). Decoupled weight decay first scales a matrix by (1 - lr * wd). So
/// with lr = 0.1, wd = 0.1, a matrix [[1, -2]] with gradient [[0.5, -1]] goes
///   step 1: 0.99 * [1, -2] - 0.1 * [1, -1] = [0.89, -1.88]
///   step 2: 0.99 * [0.89, -1.88] - 0.1 * [1, -1] = [0.7811, -1.7612]
/// and a vector (not decayed) [3] with gradient [-2] goes 3.1, then 3.2.
#[test]
fn adamw_matches_the_hand_computed_steps() {
    for kernels in [Kernels::Fused, Kernels::Composed] {
        hand_computed_steps(kernels);
    }
}

fn hand_computed_steps(kernels: Kernels) {
    let dev = Device::Cpu;
    let w = Var::new(&[[1f32, -2.]], &dev).unwrap();
    let g = Var::new(&[3f32], &dev).unwrap();
    let params = vec![Param { name: "w".into(), var: w.clone() }, Param { name: "g".into(), var: g.clone() }];
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(&params, cfg, kernels).unwrap();
    let cw = Tensor::new(&[[0.5f32, -1.]], &dev).unwrap();
    let cg = Tensor::new(&[-2f32], &dev).unwrap();
    let expected_w = [[0.89f32, -1.88], [0.7811, -1.7612]];
    let expected_g = [3.1f32, 3.2];
    for step in 0..2 {
        let loss = ((w.as_tensor() * &cw).unwrap().sum_all().unwrap() + (g.as_tensor() * &cg).unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 0.1, 1.0).unwrap();
        let wv = w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gv = g.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in wv.iter().zip(expected_w[step]) {
            assert!((a - b).abs() < 1e-5, "{kernels:?} step {}: w = {wv:?}, expected {:?}", step + 1, expected_w[step]);
        }
        assert!((gv[0] - expected_g[step]).abs() < 1e-5, "step {}: g = {gv:?}", step + 1);
    }
    assert_eq!(opt.t(), 2);
    assert_eq!(opt.state_tensors().unwrap().len(), 4, "m and v for each parameter");
}

#[test]
fn schedule_is_linear_warmup_then_cosine() {
    let (lr, min, warm, total) = (1e-3, 1e-4, 100, 2000);
    assert!((lr_at(0, lr, min, warm, total) - 1e-3 / 101.0).abs() < 1e-15);
    assert!((lr_at(99, lr, min, warm, total) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
    assert!((lr_at(100, lr, min, warm, total) - lr).abs() < 1e-15, "peak right after warmup");
    let mid = lr_at(1050, lr, min, warm, total); // halfway through the decay: the mean of lr and min_lr
    assert!((mid - 5.5e-4).abs() < 1e-12, "{mid}");
    assert!((lr_at(2000, lr, min, warm, total) - min).abs() < 1e-15);
    assert!((lr_at(5000, lr, min, warm, total) - min).abs() < 1e-15, "flat after the end");
}

#[test]
fn clipping_scales_the_global_norm_to_the_limit() {
    assert_eq!(clip_scale(0.5, 1.0), 1.0);
    assert!((clip_scale(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    assert_eq!(clip_scale(1e9, 0.0), 1.0, "0 disables clipping");
    let dev = Device::Cpu;
    let a = Var::new(&[3f32], &dev).unwrap();
    let b = Var::new(&[[1f32, 1.]], &dev).unwrap();
    // loss = 3a... gradients [3] and [[4, 0]]: global norm 5.
    let loss = ((a.as_tensor() * 3.0).unwrap().sum_all().unwrap()
        + (b.as_tensor() * &Tensor::new(&[[4f32, 0.]], &dev).unwrap()).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let params = vec![Param { name: "a".into(), var: a }, Param { name: "b".into(), var: b }];
    for kernels in [Kernels::Fused, Kernels::Composed] {
        assert!((grad_norm(&params, &grads, kernels).unwrap() - 5.0).abs() < 1e-6, "{kernels:?}");
    }
}

/// The one-pass update against the composed reference: random gradients of several sizes (the
/// parallel chunks and the vector remainders), clipping, decayed and undecayed parameters; then
/// the moments survive a save and restore.
#[test]
fn fused_adamw_matches_the_composed_update() {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let dev = Device::Cpu;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let shapes: [&[usize]; 3] = [&[37], &[129, 301], &[5, 3]];
    let init: Vec<Vec<f32>> = shapes.iter().map(|s| (0..s.iter().product()).map(|_| normal.sample(&mut rng)).collect()).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..4).map(|_| init.iter().map(|p| p.iter().map(|_| normal.sample(&mut rng)).collect()).collect()).collect();
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let run = |kernels: Kernels| {
        let params: Vec<Param> = shapes
            .iter()
            .zip(&init)
            .enumerate()
            .map(|(i, (s, v))| Param { name: format!("p{i}"), var: Var::from_tensor(&Tensor::from_slice(v, *s, &dev).unwrap()).unwrap() })
            .collect();
        let mut opt = AdamW::new(&params, cfg, kernels).unwrap();
        for (step, g) in grads.iter().enumerate() {
            // loss = sum_i <p_i, g_i>: its gradient is g_i.
            let mut loss = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
            for (p, gv) in params.iter().zip(g) {
                let gt = Tensor::from_slice(gv, p.var.shape(), &dev).unwrap();
                loss = (loss + (p.var.as_tensor() * gt).unwrap().sum_all().unwrap()).unwrap();
            }
            let store = loss.backward().unwrap();
            opt.step(&store, 1e-2 * (step + 1) as f64, 0.7).unwrap();
        }
        let values: Vec<Vec<f32>> = params.iter().map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        (params, opt, values)
    };
    let (params, fused, fv) = run(Kernels::Fused);
    let (_, composed, cv) = run(Kernels::Composed);
    for (a, b) in fv.iter().flatten().zip(cv.iter().flatten()) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "fused {a} vs composed {b}");
    }
    let (fs, cs) = (fused.state_tensors().unwrap(), composed.state_tensors().unwrap());
    assert_eq!(fs.len(), 6);
    for (name, t) in &fs {
        let (a, b) = (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), cs[name].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6 * scale), "{name}: {:?} vs {:?}", &a[..3], &b[..3]);
    }
    let restored = AdamW::restore(&params, cfg, Kernels::Fused, fused.t(), &fs).unwrap();
    for (name, t) in restored.state_tensors().unwrap() {
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), fs[&name].flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name} restored");
    }
}

#[test]
fn adamw_updates_with_the_kernels_it_is_given() {
    // The model's choice (Gpt::set_kernels) reaches the optimizer; it used to read the
    // environment, so a composed model still got the fused update.
    let dev = Device::Cpu;
    let params = vec![Param { name: "w".into(), var: Var::from_tensor(&Tensor::ones((3, 4), candle_core::DType::F32, &dev).unwrap()).unwrap() }];
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    assert_eq!(AdamW::new(&params, cfg, Kernels::Composed).unwrap().kernels(), Kernels::Composed);
    assert_eq!(AdamW::new(&params, cfg, Kernels::Fused).unwrap().kernels(), Kernels::Fused);
    let f64_params = vec![Param { name: "w".into(), var: Var::from_tensor(&Tensor::ones(3, candle_core::DType::F64, &dev).unwrap()).unwrap() }];
    assert_eq!(AdamW::new(&f64_params, cfg, Kernels::Fused).unwrap().kernels(), Kernels::Composed, "the fused update is f32 only");
}
