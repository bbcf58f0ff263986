//! `thermoformer bench`: speed of training, scoring and generation on named shapes.

use std::io::Write;

use anyhow::Result;

use crate::bench::{self, Measurement, ShapeName, Work};
use crate::error::UsageError;

/// Options of `thermoformer bench`.
#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct BenchArgs {
    /// Shapes to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "small")]
    pub shape: Vec<ShapeName>,
    /// Workloads to run on each shape, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "train,score,generate"
    )]
    pub work: Vec<Work>,
    /// Arithmetic of the products, comma-separated to run several (f32,bf16); MFU is against
    /// each precision's own 1024^3 ceiling. bf16 runs the kernel THERMOFORMER_BF16_KERNEL names
    /// (amx for AMX's tiles) or the fastest reproducible one.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    pub precision: Vec<crate::config::Precision>,
    /// Measured iterations per workload (after warm-up); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = super::DeviceArg::Cpu)]
    pub device: super::DeviceArg,
    #[command(flatten)]
    pub report: super::ReportArgs,
}

/// `thermoformer bench`.
pub fn run_bench(args: &BenchArgs) -> Result<()> {
    let json = args.report.json();
    if args.iters == 0 {
        return Err(UsageError("--iters must be at least 1".into()).into());
    }
    let shapes: Vec<bench::Shape> = args.shape.iter().map(|s| s.shape()).collect();
    let dev = args.device.device()?;
    let mut ceilings = Vec::new();
    for &p in &args.precision {
        crate::kernels::bf16::require(p)?;
        ceilings.push((p, bench::ceiling(p, &dev)?));
    }
    let mut out = std::io::stdout().lock();
    if !json {
        for (p, c) in &ceilings {
            let how = match p {
                crate::config::Precision::F32 => "f32, candle".to_string(),
                crate::config::Precision::Bf16 => format!(
                    "bf16, {} kernel",
                    crate::kernels::bf16::Kernel::from_env()
                        .map_err(UsageError)?
                        .name()
                ),
            };
            writeln!(out, "matmul ceiling (1024^3 {how}): {c:.1} GFLOP/s")?;
        }
        writeln!(
            out,
            "{:<6} {:<9} {:<5} {:>11} {:>11} {:>9} {:>6} {:>10}",
            "shape", "work", "prec", "ms/iter", "tokens/s", "GFLOP/s", "MFU", "peak MiB"
        )?;
    }
    let mut results: Vec<Measurement> = Vec::new();
    for shape in &shapes {
        for &w in &args.work {
            for &(p, ceiling) in &ceilings {
                let m = bench::bench(w, shape, args.iters, p, ceiling, &dev)?;
                if !json {
                    writeln!(
                        out,
                        "{:<6} {:<9} {:<5} {:>11.2} {:>11.0} {:>9.1} {:>5.1}% {:>10}",
                        m.shape,
                        m.work,
                        crate::config::spelled(&m.precision),
                        m.ms_per_iter,
                        m.tokens_per_sec,
                        m.gflops,
                        100.0 * m.mfu,
                        m.peak_rss_mib.map_or("-".into(), |r| format!("{r:.0}"))
                    )?;
                    out.flush()?;
                }
                results.push(m);
            }
        }
    }
    if json {
        let bf16_kernel = args
            .precision
            .contains(&crate::config::Precision::Bf16)
            .then(|| crate::kernels::bf16::Kernel::from_env().map(|k| k.name()))
            .transpose()
            .map_err(UsageError)?;
        let ceilings: serde_json::Map<String, serde_json::Value> = ceilings
            .iter()
            .map(|(p, c)| (crate::config::spelled(p), serde_json::json!(c)))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "matmul_ceiling_gflops": ceilings.get("f32"),
                "matmul_ceilings_gflops": ceilings,
                // The bf16 kernel the bf16 rows ran on (null without bf16 rows).
                "bf16_kernel": bf16_kernel,
                "results": results
            })
        )?;
    }
    Ok(())
}
