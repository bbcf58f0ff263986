//! What an op costs besides its arithmetic, at the small bench shape (nanoGPT's CPU recipe):
//!
//! - the nodes of one training step's graph (each becomes a zeroed gradient buffer and an add in
//!   candle's backward), and how many of them are at least `(rows, d)` wide;
//! - the time of an op on one element (dispatch, allocation, the pool's hand-off), of a zeroed
//!   `(768, 128)` buffer, and of an add of two such tensors: what each node costs candle's backward.
//!
//! `cargo run --release --example op_overhead`
use std::time::Instant;

use candle_core::{Device, Tensor};
use thermoformer::bench::SMALL;
use thermoformer::model::{loss, params::Params};

// The binary's allocator and its setting, so that allocations cost here what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Median microseconds of `f` over `n` runs, after a warm-up.
fn micros(n: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    for _ in 0..n / 10 + 1 {
        f()?;
    }
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<candle_core::Result<_>>()?;
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[n / 2])
}

fn main() -> anyhow::Result<()> {
    thermoformer::keep_freed_memory();
    thermoformer::pin_thread_count();
    let dev = Device::Cpu;
    let cfg = SMALL.config();
    let (_params, model) = Params::init(&cfg, 0.02, 1, &dev)?;
    let (b, t) = (SMALL.batch, SMALL.context);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % (SMALL.vocab - 1)) as u32).collect();
    let inputs = Tensor::from_vec(ids.clone(), (b, t), &dev)?;
    let targets = Tensor::from_vec(ids, b * t, &dev)?;
    let logits = model.forward(&inputs)?.flatten_to(1)?;
    let l = loss::cross_entropy_with(&logits, &targets, 0.0, model.kernels())?;
    let nodes = l.loss.sorted_nodes();
    let rows = b * t;
    let wide_nodes: Vec<usize> = nodes.iter().map(|n| n.elem_count()).filter(|&e| e >= rows * cfg.d_model).collect();
    let wide: usize = wide_nodes.iter().sum();
    println!("small shape ({} layers x {}, batch {b} x {t}): {} graph nodes, {} of them (rows, >= d) wide, {:.1} M floats in those", cfg.n_layer, cfg.d_model, nodes.len(), wide_nodes.len(), wide as f64 / 1e6);

    let one = Tensor::new(&[1f32], &dev)?;
    let op = micros(20_000, || (&one + &one).map(|_| ()))?;
    let x = Tensor::ones((rows, cfg.d_model), candle_core::DType::F32, &dev)?;
    let zeros = micros(2_000, || x.zeros_like().map(|_| ()))?;
    let add = micros(2_000, || (&x + &x).map(|_| ()))?;
    println!("one op on 1 element: {op:.2} us; zeros_like of ({rows}, {}): {zeros:.2} us; an add of two: {add:.2} us", cfg.d_model);
    let backward = micros(50, || l.loss.backward().map(|_| ()))?;
    println!("backward of one step: {:.2} ms; a zeroed buffer and an add per (rows, d)-sized share of its nodes: about {:.2} ms", backward / 1e3, (zeros + add) * wide as f64 / (rows * cfg.d_model) as f64 / 1e3);
    Ok(())
}
