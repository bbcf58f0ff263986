use clap::Parser;

fn main() {
    let cli = thermoformer::cli::Cli::parse();
    if let Err(err) = thermoformer::cli::run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(thermoformer::error::exit_code(&err));
    }
}
