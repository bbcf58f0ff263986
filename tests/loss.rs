//! The label-smoothed cross-entropy against numbers worked out by hand.

use candle_core::{Device, Tensor};
use thermoformer::model::loss::{cross_entropy, token_energies};

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

/// Two rows over a 3-token vocabulary:
///   row 0: logits [1, 2, 3], target 0. ln Z = ln(e + e^2 + e^3) = 3.4076059644,
///          ln p = [-2.4076059644, -1.4076059644, -0.4076059644];
///          CE = 2.4076059644, mean_v(-ln p) = 1.4076059644.
///   row 1: logits [0, 0, 0], target 2: every ln p = -ln 3 = -1.0986122887.
/// eps = 0.1: row 0: 0.9 * 2.4076059644 + 0.1 * 1.4076059644 = 2.3076059644; row 1: 1.0986122887.
const CE: f64 = (2.4076059644 + 1.0986122887) / 2.0; // 1.75310912655
const SMOOTHED: f64 = (2.3076059644 + 1.0986122887) / 2.0; // 1.70310912655

fn example() -> (Tensor, Tensor) {
    let logits = Tensor::new(&[[1f32, 2., 3.], [0., 0., 0.]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    (logits, targets)
}

#[test]
fn smoothed_loss_matches_the_hand_computed_example() {
    let (logits, targets) = example();
    let l = cross_entropy(&logits, &targets, 0.1).unwrap();
    assert!((scalar(&l.ce) - CE).abs() < 1e-6, "CE {}", scalar(&l.ce));
    assert!((scalar(&l.loss) - SMOOTHED).abs() < 1e-6, "smoothed {}", scalar(&l.loss));
}

#[test]
fn without_smoothing_the_loss_is_the_cross_entropy() {
    let (logits, targets) = example();
    let l = cross_entropy(&logits, &targets, 0.0).unwrap();
    assert_eq!(scalar(&l.loss), scalar(&l.ce));
    assert!((scalar(&l.ce) - CE).abs() < 1e-6);
}

#[test]
fn token_energies_are_surprisals() {
    let (logits, targets) = example();
    let e = token_energies(&logits, &targets).unwrap().to_vec1::<f32>().unwrap();
    assert!((e[0] as f64 - 2.4076059644).abs() < 1e-6);
    assert!((e[1] as f64 - 3f64.ln()).abs() < 1e-6);
}

#[test]
fn smoothing_gradient_pulls_towards_uniform() {
    // d loss / d logit_v = p_v - q_v with q = (1 - eps) onehot + eps / V: for uniform logits,
    // eps = 0.3 and V = 3, p = 1/3 and q = [0.1, 0.1, 0.8] for target 2, so the gradient is
    // [1/3 - 0.1, 1/3 - 0.1, 1/3 - 0.8].
    let logits = candle_core::Var::new(&[[0f32, 0., 0.]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[2u32], &Device::Cpu).unwrap();
    let l = cross_entropy(logits.as_tensor(), &targets, 0.3).unwrap();
    let g = l.loss.backward().unwrap().get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expected = [1.0 / 3.0 - 0.1f32, 1.0 / 3.0 - 0.1, 1.0 / 3.0 - 0.8];
    for (a, b) in g.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6, "gradient {g:?}, expected {expected:?}");
    }
}
