//! GFLOP/s of the bf16 product per microkernel (AMX's tiles too, where the CPU has them) against
//! candle's f32 matmul, at a few shapes.
//!
//! `cargo run --release --example bf16_gemm [ITERS]`
use std::time::Instant;

use candle_core::{Device, Tensor};
use thermoformer::kernels::bf16::gemm::{self, PackedB, Src};
use thermoformer::kernels::bf16::Kernel;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let iters: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(9);
    thermoformer::pin_thread_count();
    println!("threads: {}", candle_core::utils::get_num_threads());
    // The packed-B column runs the process's kernel: THERMOFORMER_BF16_KERNEL, else auto's pick.
    let kernel = Kernel::from_env().map_err(anyhow::Error::msg)?;
    println!("packed B runs: {} (auto picks {})", kernel.name(), Kernel::best().name());
    println!("{:>18} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12}", "m x n x k", "f32", "avx512bf16", "avx512 (emu)", "avx2 (emu)", "amx", "packed B");
    for &(m, n, k) in &[(1024, 1024, 1024), (768, 384, 128), (768, 128, 512), (16384, 1536, 384), (1, 50304, 768)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let flops = 2.0 * (m * n * k) as f64;
        let ta = Tensor::from_slice(&a, (m, k), &Device::Cpu)?;
        let tb = Tensor::from_slice(&b, (k, n), &Device::Cpu)?;
        let time = |f: &mut dyn FnMut()| {
            f();
            median((0..iters).map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            }).collect())
        };
        let f32_s = time(&mut || {
            ta.matmul(&tb).unwrap();
        });
        let mut c = vec![0f32; m * n];
        let mut cols = Vec::new();
        for kernel in [Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2, Kernel::Amx] {
            if !kernel.available() {
                cols.push("-".to_string());
                continue;
            }
            let s = time(&mut || unsafe {
                gemm::gemm(kernel, m, n, k, Src::f32_rows(&a, k), Src::f32_rows(&b, n), c.as_mut_ptr(), n, true)
            });
            cols.push(format!("{:.1}", flops / s / 1e9));
        }
        let packed = unsafe { PackedB::new(Src::f32_rows(&b, n), k, n) };
        let s = time(&mut || unsafe { gemm::gemm_packed(kernel, m, Src::f32_rows(&a, k), &packed, c.as_mut_ptr(), n, true) });
        println!("{:>18} {:>10.1} {:>12} {:>12} {:>12} {:>12} {:>12.1}", format!("{m}x{n}x{k}"), flops / f32_s / 1e9, cols[0], cols[1], cols[2], cols[3], flops / s / 1e9);
    }
    Ok(())
}
