//! `tile-proxy` binary: parse the command line, load and validate the configuration, run.

use std::process::ExitCode;

use clap::Parser;
use tile_proxy::app::cli::{Cli, Command, HealthcheckArgs};
use tile_proxy::app::{reload, server, telemetry};
use tile_proxy::config::Settings;

// The binary's allocator (only the binary: tests and the library use the system one). glibc
// malloc gives each busy thread an arena and keeps what is freed there, so the cache's churn of
// tile buffers across actix workers and foyer's threads leaves RSS far above the memory tier
// (bench/memory.sh). `--no-default-features` falls back to glibc malloc.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Some(Command::Serve(a)) => (a, false),
        Some(Command::CheckConfig(a)) => (a, true),
        Some(Command::Healthcheck(h)) => return healthcheck(&h),
        Some(Command::Seed(a)) => return tile_proxy::app::seed::run_cli(a),
        Some(Command::Stats(a)) => return tile_proxy::app::stats::run_cli(&a),
        Some(Command::Purge(a)) => return tile_proxy::app::purge::run_cli(&a),
        None => (cli.serve, false),
    };
    let (settings, effective) = match Settings::load_effective(&args.flags()) {
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
    // What the configuration read, as loaded: a change from here on is reloaded.
    let baseline = reload::Baseline::read(&args.flags(), &effective);
    let _log_guard = telemetry::init(settings.log_json, settings.access_log);
    raise_open_files_limit();
    actix_web::rt::System::new().block_on(async move {
        let listen = settings.listen;
        match server::start(settings).await {
            Ok(running) => {
                // SIGHUP and a change of a file the configuration reads load it again (handled
                // before the listening line: from then on SIGHUP is safe to send).
                let reloader = reload::Reloader::new(running.live().clone(), args.flags(), baseline);
                std::sync::Arc::new(reloader).spawn();
                // SIGTERM and SIGINT too: a supervisor (or a test) may stop it the moment it
                // reads the listening line; the default action would kill it undrained.
                let stop = server::StopSignals::new();
                let admin = running.admin_addr().map(|a| a.to_string());
                tracing::info!(addr = %running.addr(), admin_addr = admin.as_deref(), "tile-proxy listening");
                running.run_until_signal(stop).await;
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
    // The listen address as `serve` would take it: the environment over the config file.
    let listen = std::env::var("TILE_PROXY_LISTEN").ok().filter(|l| !l.is_empty()).or_else(|| {
        let path = std::env::var("TILE_PROXY_CONFIG").ok().filter(|p| !p.is_empty())?;
        let file: toml::Value = std::fs::read_to_string(path).ok()?.parse().ok()?;
        file.get("listen")?.as_str().map(str::to_string)
    });
    let result = tile_proxy::app::healthcheck::target(h.url.as_deref(), listen.as_deref())
        .and_then(|(host, path)| tile_proxy::app::healthcheck::probe(&host, &path, h.timeout));
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

/// The disk tier keeps one file open per block (an 8 GiB tier: about 2,000), plus a socket per
/// connection: take the hard limit on open files as the soft one.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(before, after = lim.rlim_max, "open files limit raised");
            }
        }
    }
}
