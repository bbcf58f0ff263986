use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    thermoformer::pin_thread_count();
    let cli = thermoformer::cli::Cli::parse();
    if let Err(err) = thermoformer::cli::run(cli) {
        if thermoformer::error::is_broken_pipe(&err) {
            std::process::exit(0); // the reader went away (`| head`): not an error
        }
        eprintln!("error: {err:#}");
        std::process::exit(thermoformer::error::exit_code(&err));
    }
}
