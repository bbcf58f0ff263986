use clap::Parser;

// The BLAS libraries behind candle's mkl / accelerate features must be linked by the binary.
#[cfg(feature = "accelerate")]
extern crate accelerate_src;
#[cfg(feature = "mkl")]
extern crate intel_mkl_src;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    thermoformer::pin_thread_count();
    let cli = thermoformer::cli::Cli::parse();
    if let Err(err) = thermoformer::cli::run(cli) {
        if thermoformer::error::is_broken_pipe(&err) {
            std::process::exit(0); // the reader went away (`| head`): not an error
        }
        // One line: candle appends a backtrace to its errors when RUST_BACKTRACE is set.
        let message = format!("{err:#}");
        eprintln!("error: {}", message.lines().next().unwrap_or_default());
        std::process::exit(thermoformer::error::exit_code(&err));
    }
}
