//! `thermoformer serve`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;

use crate::serve::{self, App};

/// Options of `thermoformer serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Run directory written by `thermoformer train` or `thermoformer import`.
    #[arg(long, value_name = "DIR", default_value = "checkpoints/shakespeare")]
    pub checkpoint: PathBuf,
    /// Address to listen on; anything but a loopback address is reachable from other machines
    /// (a warning says so).
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Port to listen on; 0 lets the system choose a free one (the URL printed says which).
    #[arg(long, value_name = "N", default_value_t = 8080)]
    pub port: u16,
    /// Device to run the model on.
    #[arg(long, value_enum, default_value_t = super::DeviceArg::Cpu)]
    pub device: super::DeviceArg,
    /// Arithmetic of the model's products, as for score and generate.
    #[arg(long, value_enum, default_value_t = crate::config::Precision::F32)]
    pub precision: crate::config::Precision,
}

/// `thermoformer serve`: load the run, print the URL, serve until Ctrl-C.
pub fn run_serve(args: &ServeArgs) -> Result<()> {
    let mut loaded = crate::checkpoint::load(&args.checkpoint, &args.device.device()?)?;
    crate::kernels::bf16::require(args.precision)?;
    loaded.model.set_precision(args.precision);
    loaded.model.prepare()?;
    if !args.host.is_loopback() {
        crate::progress::note(format!(
            "warning: listening on {}, so other machines can reach the explorer and run the model; use --host 127.0.0.1 to keep it local",
            args.host
        ));
    }
    let app = App { loaded, name: args.checkpoint.display().to_string() };
    serve::serve(app, SocketAddr::new(args.host, args.port), |addr| {
        // The one line on stdout: scripts read the URL (and the port chosen for --port 0) from it.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "thermoformer explorer on http://{addr}/ (Ctrl-C to stop)");
        let _ = out.flush();
    })?;
    crate::progress::note("stopped");
    Ok(())
}
