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
    #[arg(long, value_enum, value_delimiter = ',', default_value = "train,score,generate")]
    pub work: Vec<Work>,
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
    let ceiling = bench::matmul_ceiling(&dev)?;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(out, "matmul ceiling (1024^3 f32, candle): {ceiling:.1} GFLOP/s")?;
        writeln!(out, "{:<6} {:<9} {:>11} {:>11} {:>9} {:>6} {:>10}", "shape", "work", "ms/iter", "tokens/s", "GFLOP/s", "MFU", "peak MiB")?;
    }
    let mut results: Vec<Measurement> = Vec::new();
    for shape in &shapes {
        for &w in &args.work {
            let m = bench::bench(w, shape, args.iters, ceiling, &dev)?;
            if !json {
                writeln!(
                    out,
                    "{:<6} {:<9} {:>11.2} {:>11.0} {:>9.1} {:>5.1}% {:>10}",
                    m.shape,
                    m.work,
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
    if json {
        writeln!(out, "{}", serde_json::json!({ "matmul_ceiling_gflops": ceiling, "results": results }))?;
    }
    Ok(())
}
