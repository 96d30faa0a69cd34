//! `tile-proxy` binary: parse the command line, load and validate the configuration, run.

use std::process::ExitCode;

use clap::Parser;
use tile_proxy::config::{Cli, Command, HealthcheckArgs, Settings};
use tile_proxy::{server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Some(Command::Serve(a)) => (a, false),
        Some(Command::CheckConfig(a)) => (a, true),
        Some(Command::Healthcheck(h)) => return healthcheck(&h),
        None => (cli.serve, false),
    };
    let (settings, effective) = match Settings::load_effective(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprint!("tile-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        print!("{}", effective.effective_toml(&settings));
        return ExitCode::SUCCESS;
    }
    let _log_guard = telemetry::init(settings.log_json);
    actix_web::rt::System::new().block_on(async move {
        let listen = settings.listen;
        match server::start(settings).await {
            Ok(running) => {
                tracing::info!(addr = %running.addr(), "tile-proxy listening");
                running.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, %listen, "tile-proxy could not start");
                eprintln!("tile-proxy: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `tile-proxy healthcheck`: 0 when the proxy answers 200, 1 otherwise (with the reason).
fn healthcheck(h: &HealthcheckArgs) -> ExitCode {
    let listen = std::env::var("TILE_PROXY_LISTEN").ok().filter(|l| !l.is_empty());
    let result = tile_proxy::healthcheck::target(h.url.as_deref(), listen.as_deref())
        .and_then(|(host, path)| tile_proxy::healthcheck::probe(&host, &path, h.timeout));
    match result {
        Ok(line) => {
            println!("healthy: {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
