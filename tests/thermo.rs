//! The physics of attention heads: entropy, ln Z, mean energy and heat capacity of Boltzmann rows.

mod common;

use candle_core::Device;
use thermoformer::kernels::Kernels;
use thermoformer::model::HeadTemperature;
use thermoformer::physics::thermo::{self, RowStats};

fn energies(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 6.0 - 3.0
        })
        .collect()
}

#[test]
fn entropy_rises_strictly_with_temperature_and_obeys_the_identity() {
    for seed in 0..50 {
        let e = energies(2 + (seed as usize % 30), seed);
        let temps = [0.05, 0.1, 0.3, 0.7, 1.0, 1.5, 3.0, 10.0, 100.0];
        let stats: Vec<RowStats> = temps.iter().map(|t| RowStats::from_energies(&e, 1.0 / t)).collect();
        for w in stats.windows(2) {
            assert!(w[1].entropy > w[0].entropy, "seed {seed}: H must rise with T: {w:?}");
        }
        for (s, t) in stats.iter().zip(temps) {
            let identity = s.mean_energy / t + s.ln_z;
            assert!((s.entropy - identity).abs() < 1e-9, "H = beta<E> + ln Z");
        }
    }
}

#[test]
fn temperature_limits_are_ground_state_and_uniform() {
    let e = energies(17, 3);
    let cold = RowStats::from_energies(&e, 1e4);
    assert!(cold.entropy < 1e-6, "T -> 0: H -> 0, got {}", cold.entropy);
    let e_min = e.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((cold.mean_energy - e_min).abs() < 1e-6, "T -> 0: <E> -> ground state");
    let hot = RowStats::from_energies(&e, 1e-6);
    assert!((hot.entropy - (17f64).ln()).abs() < 1e-6, "T -> inf: H -> ln n, got {}", hot.entropy);
    let one = RowStats::from_energies(&[0.7], 1.0);
    assert_eq!((one.entropy, one.heat_capacity), (0.0, 0.0));
}

#[test]
fn heat_capacity_is_the_slope_of_entropy_in_log_temperature() {
    let e = energies(9, 8);
    let (t, dt) = (0.8f64, 1e-5);
    let h = |t: f64| RowStats::from_energies(&e, 1.0 / t).entropy;
    let slope = (h(t * (1.0 + dt)) - h(t * (1.0 - dt))) / ((1.0 + dt).ln() - (1.0 - dt).ln());
    let c = RowStats::from_energies(&e, 1.0 / t).heat_capacity;
    assert!((slope - c).abs() < 1e-6 * c.max(1.0), "dH/dlnT = {slope}, C = {c}");
}

/// A tiny model with a large init, so that scores are of order one and more and the
/// temperature limits are visible, on the chosen kernels.
fn large_init_model(kernels: Kernels) -> (thermoformer::ModelConfig, thermoformer::Gpt, candle_core::Tensor) {
    let (_, cfg, _, _) = common::tiny_model(false);
    let (_, mut model) = thermoformer::model::params::Params::init(&cfg, 0.5, 3, &Device::Cpu).unwrap();
    model.set_kernels(kernels);
    let ids = common::random_ids(2, cfg.context, cfg.vocab_size - 1, 0, 4);
    (cfg, model, ids)
}

#[test]
fn the_applied_weights_are_the_boltzmann_law_of_the_recomputed_scores() {
    // On the fused kernel (what training, scoring and generation run) and on the composed path.
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let (cfg, model, ids) = large_init_model(kernels);
        let (_, stats) = model.forward_with_stats(&ids).unwrap();
        let heads = thermo::head_summaries(&stats).unwrap();
        println!("{kernels:?}: largest residual {:.2e}", heads.iter().map(|h| h.identity_residual).fold(0.0, f64::max));
        for h in heads {
            // Measured: 1.45e-6 on the fused kernel, 1.55e-6 composed (f32 rounding).
            assert!(h.identity_residual < 1e-5, "{kernels:?} layer {} head {}: KL(alpha || Boltzmann) = {}", h.layer, h.head, h.identity_residual);
        }
        // Every row, recomputed in f64 from the energies alone (a fresh softmax), agrees with
        // the applied alpha (H) and the model's log-sum-exp (ln Z).
        let t = cfg.context;
        for layer in &stats {
            let rows = thermo::head_rows(layer).unwrap();
            let e = layer.energy.to_dtype(candle_core::DType::F64).unwrap();
            let (b, h) = (e.dim(0).unwrap(), e.dim(1).unwrap());
            let e = e.flatten_to(1).unwrap().to_vec3::<f64>().unwrap(); // (B*H, T, T), sequence-major
            for head in 0..h {
                for seq in 0..b {
                    for i in 0..t {
                        let independent = RowStats::from_energies(&e[seq * h + head][i][..=i], rows[head].beta);
                        let row = rows[head].rows[seq * t + i];
                        let (keys, measured) = (row.keys, row.stats);
                        assert_eq!(keys, i + 1);
                        assert!((independent.entropy - measured.entropy).abs() < 1e-4, "{kernels:?}: H of row {i}");
                        assert!((independent.ln_z - measured.ln_z).abs() < 1e-4, "{kernels:?}: ln Z of row {i}");
                        assert!((independent.mean_energy - measured.mean_energy).abs() < 1e-4, "{kernels:?}: <E> of row {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_kernel_that_applies_another_temperature_fails_the_identity() {
    // The mutation: weights applied at T' while T is reported. Layer 0's scores do not depend on
    // the temperatures, so its weights at T' = 0.8 are what such a kernel would have applied.
    for kernels in [Kernels::Fused, Kernels::Composed] {
        let (_, mut model, ids) = large_init_model(kernels);
        model.override_temperatures(Some(1.0), &[]).unwrap();
        let (_, honest) = model.forward_with_stats(&ids).unwrap();
        // Measured: 3.4e-2 at T = 0.8 and 3.2e-4 at T = 1.02, against 1.5e-6 honest.
        for (t_applied, bar) in [(0.8, 1e-2), (1.02, 1e-4)] {
            model.override_temperatures(Some(t_applied), &[]).unwrap();
            let (_, applied) = model.forward_with_stats(&ids).unwrap();
            let mutant = thermoformer::model::AttnStats { alpha: applied[0].alpha.clone(), ..honest[0].clone() };
            let worst = thermo::head_summaries(&[mutant]).unwrap().iter().map(|h| h.identity_residual).fold(0.0, f64::max);
            let clean = thermo::head_summaries(&honest[..1]).unwrap().iter().map(|h| h.identity_residual).fold(0.0, f64::max);
            println!("{kernels:?}: weights at T = {t_applied} reported as T = 1: residual {worst:.2e} (honest {clean:.2e})");
            assert!(worst > bar, "{kernels:?}: weights at T = {t_applied} reported as T = 1 give a residual of only {worst}");
            assert!(clean < 1e-5 && worst > 10.0 * clean, "{kernels:?}: {clean} honest, {worst} mutated");
        }
    }
}

#[test]
fn model_rows_follow_the_temperature_limits_and_per_head_overrides() {
    let (_, mut model, ids) = large_init_model(Kernels::Fused);
    let summary = |model: &thermoformer::Gpt| thermo::head_summaries(&model.forward_with_stats(&ids).unwrap().1).unwrap();
    // Layer 0's scores do not depend on temperatures, so its entropy rises with T.
    let mut last = -1.0;
    for temp in [0.01, 0.3, 1.0, 3.0, 1e4] {
        model.override_temperatures(Some(temp), &[]).unwrap();
        let heads = summary(&model);
        let h0 = heads[0].entropy;
        assert!(h0 > last, "T = {temp}: {h0} after {last}");
        last = h0;
        if temp == 1e4 {
            assert!((heads[0].normalized_entropy - 1.0).abs() < 1e-3, "uniform rows: {}", heads[0].normalized_entropy);
        }
        if temp == 0.01 {
            assert!(heads[0].normalized_entropy < 0.2, "near one-hot rows: {}", heads[0].normalized_entropy);
        }
    }
    // A per-head override changes that head only.
    model.override_temperatures(Some(1.0), &[HeadTemperature { layer: 0, head: 1, temperature: 0.25 }]).unwrap();
    let temps = model.temperatures().unwrap();
    assert!((temps[0][0] - 1.0).abs() < 1e-6 && (temps[0][1] - 0.25).abs() < 1e-6, "{temps:?}");
    assert!(temps[1].iter().all(|t| (t - 1.0).abs() < 1e-6));
    assert!(model.override_temperatures(None, &[HeadTemperature { layer: 9, head: 0, temperature: 1.0 }]).is_err());
}

/// Reading every head keeps (layers x heads x T x T) tables: a reading that cannot fit in memory
/// is refused with one line naming the shape, before the pass allocates anything. (Without the
/// check this pass would ask for 44 TB.)
#[test]
fn an_inspection_too_large_for_memory_is_refused_before_it_runs() {
    let tok = thermoformer::Tok::train_char(&common::corpus_text(5000)).unwrap();
    let cfg = thermoformer::ModelConfig {
        context: 65536,
        n_layer: 4,
        n_head: 64,
        d_model: 64,
        positions: thermoformer::config::Positions::Learned,
        ..thermoformer::ModelConfig::tiny(tok.vocab_size())
    };
    let (_, model) = thermoformer::model::params::Params::init(&cfg, 0.02, 7, &candle_core::Device::Cpu).unwrap();
    let ids = vec![1u32; 65535];
    let err = thermoformer::physics::inspect::inspect_ids(&model, &tok, &ids).unwrap_err().to_string();
    assert!(err.contains("reading 4 layers x 64 heads on 65536 positions needs at least"), "{err}");
    assert!(err.ends_with("read a shorter text"), "{err}");
}
