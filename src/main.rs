use std::io::Write;

use clap::error::ErrorKind;

// The BLAS libraries behind candle's mkl / accelerate features must be linked by the binary.
#[cfg(feature = "accelerate")]
extern crate accelerate_src;
#[cfg(feature = "mkl")]
extern crate intel_mkl_src;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    thermoformer::keep_freed_memory();
    thermoformer::pin_thread_count();
    let cli = match thermoformer::cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) => e.exit(),
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "{}", thermoformer::cli::one_line(&e.to_string()));
            std::process::exit(e.exit_code());
        }
    };
    if let Err(err) = thermoformer::cli::run(cli) {
        if thermoformer::error::is_broken_pipe(&err) {
            std::process::exit(0); // the reader went away (`| head`): not an error
        }
        // One line: candle appends a backtrace to its errors when RUST_BACKTRACE is set.
        let message = format!("{err:#}");
        let _ = writeln!(std::io::stderr().lock(), "error: {}", message.lines().next().unwrap_or_default());
        std::process::exit(thermoformer::error::exit_code(&err));
    }
}
