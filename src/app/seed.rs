//! `tile-proxy seed`: the flags, the count (or `--dry-run`), the resume state, the progress bar
//! on stderr, the one-line summary on stdout and the exit status:
//! 0 all done, 1 some tiles failed, 2 bad arguments, 3 upstream budget spent, 130 interrupted.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::app::server::{self, StartError, StartOptions};
use crate::config::{Flags, Settings};
use crate::seed::fetchers::{self, Direct, ThroughProxy};
use crate::seed::run::{self, Ending, Fetcher, Progress, Stop, StopReason};
use crate::seed::state_file::{self, Done};
use crate::seed::tiles::{self, Job, JobError, JobParams, Kind, DEFAULT_MAX_TILES};
use crate::service::tiles::TileService;

/// Exit status: some tiles failed.
const EXIT_FAILED: u8 = 1;
/// Exit status: bad arguments (or a state file or config that cannot be used).
const EXIT_USAGE: u8 = 2;
/// Exit status: the index's upstream budget is spent; run the same command later.
const EXIT_BUDGET: u8 = 3;
/// Exit status: interrupted (Ctrl-C, SIGTERM); run the same command to resume.
const EXIT_INTERRUPTED: u8 = 130;

/// The flags of `tile-proxy seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Index (`indice`) to seed for
    #[arg(long)]
    pub index: String,
    /// Area as west,south,east,north in degrees (west > east crosses the antimeridian)
    #[arg(long, value_name = "W,S,E,N", allow_hyphen_values = true, required_unless_present = "geojson")]
    pub bbox: Option<String>,
    /// Area as a GeoJSON file (Polygon, MultiPolygon, Feature or FeatureCollection, WGS84):
    /// only the tiles its polygons cover, holes left out
    #[arg(long, value_name = "FILE", conflicts_with = "bbox")]
    pub geojson: Option<PathBuf>,
    /// Zoom level (12) or range (10-14)
    #[arg(long, value_name = "Z|MIN-MAX")]
    pub zoom: String,
    /// Raster resource
    #[arg(long, default_value = "base")]
    pub resource: String,
    /// Raster format
    #[arg(long, default_value = "png")]
    pub format: String,
    /// Raster style (default: HERE's, explore.day)
    #[arg(long)]
    pub style: Option<String>,
    /// Raster tile size, 256 or 512 (default: HERE's, 256)
    #[arg(long)]
    pub size: Option<u16>,
    /// Another query parameter of the tiles, e.g. --param lang=de (repeatable)
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// Seed vector tiles of this layer (base, core) instead of raster tiles
    #[arg(long, conflicts_with_all = ["resource", "format", "style", "size"])]
    pub layer: Option<String>,
    /// The running proxy to seed through
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub through: String,
    /// Fill the cache of a config file directly (no proxy may run on its cache folder)
    #[arg(long, conflicts_with = "through")]
    pub direct: bool,
    /// With --direct: the proxy's TOML configuration file [env: TILE_PROXY_CONFIG]
    #[arg(long, env = "TILE_PROXY_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
    /// Tiles fetched at a time
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Print the tile count per zoom and exit, without any request
    #[arg(long)]
    pub dry_run: bool,
    /// Resume state file [default: ./.tile-proxy-seed-<hash of the job>.json]
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    /// Refuse jobs with more tiles than this
    #[arg(long, default_value_t = DEFAULT_MAX_TILES)]
    pub max_tiles: u64,
}

impl SeedArgs {
    /// The job the flags describe.
    fn job_params(&self) -> Result<JobParams, JobError> {
        let mut params = BTreeMap::new();
        for kv in &self.params {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(JobError { field: "params", message: format!("`{kv}` is not K=V") });
            };
            params.insert(k.to_string(), v.to_string());
        }
        if let Some(style) = &self.style {
            params.insert("style".into(), style.clone());
        }
        if let Some(size) = self.size {
            params.insert("size".into(), size.to_string());
        }
        let kind = match &self.layer {
            Some(layer) => Kind::Vector { layer: layer.clone() },
            None => Kind::Raster { resource: self.resource.clone(), format: self.format.clone() },
        };
        let (bbox, shape) = match (&self.geojson, &self.bbox) {
            (Some(path), _) => {
                let shape = read_geojson(path).map_err(|message| JobError { field: "geojson", message })?;
                (shape.bounds(), Some(shape))
            }
            (None, Some(bbox)) => (tiles::parse_bbox(bbox)?, None),
            (None, None) => return Err(JobError { field: "bbox", message: "give --bbox or --geojson".into() }),
        };
        Ok(JobParams { index: self.index.clone(), bbox, shape, zoom: tiles::parse_zoom(&self.zoom)?, kind, params })
    }
}

/// Reads a GeoJSON area from a file; the message names the file.
pub fn read_geojson(path: &std::path::Path) -> Result<crate::domain::geo::Shape, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = serde_json::from_slice(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    crate::domain::geo::Shape::from_geojson(value).map_err(|e| format!("{}: {e}", path.display()))
}

/// `tile-proxy seed`.
pub fn run_cli(args: SeedArgs) -> ExitCode {
    init_logs();
    let job = match args.job_params().and_then(|p| Job::new(p, args.max_tiles)) {
        Ok(job) => job,
        Err(e) => return usage(e),
    };
    if args.dry_run {
        print_counts(&job);
        return ExitCode::SUCCESS;
    }
    let state_path = args.state.clone().unwrap_or_else(|| state_file::default_path(&job.hash()));
    let done = match state_file::load(&state_path, &job.hash(), job.total) {
        Ok(done) => done,
        Err(e) => return usage(e),
    };
    actix_web::rt::System::new().block_on(async move {
        if args.direct {
            seed_direct(&args, job, done, &state_path).await
        } else {
            if !args.quiet {
                eprintln!("{}", announce(&job, &done, &format!("through {}", args.through)));
            }
            let fetcher = ThroughProxy::new(&args.through);
            seed(&args, &job, &fetcher, done, &state_path).await
        }
    })
}

/// Opens the configured cache (as `serve` would, without HTTP) and seeds through its service.
async fn seed_direct(args: &SeedArgs, job: Job, done: Done, state_path: &Path) -> ExitCode {
    let serve_args = Flags { config: args.config.clone(), ..Flags::default() };
    let settings = match Settings::load(&serve_args) {
        Ok(s) => s,
        Err(e) => {
            eprint!("tile-proxy seed: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = fetchers::check_index(&settings, &job.params.index) {
        return usage(e);
    }
    let built = match server::build(settings, StartOptions::default()).await {
        Ok(built) => built,
        Err(StartError::CacheInUse(e)) => {
            eprintln!("tile-proxy seed: {e}\na proxy runs on this cache folder: seed through it with --through URL");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("tile-proxy seed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = built.state.clone();
    if !args.quiet {
        eprintln!("{}", announce(&job, &done, &format!("into {}", state.settings.cache_dir.display())));
    }
    let client = crate::upstream::build_client(&state.settings.upstream);
    let fetcher = Direct { service: TileService::new(state.core.clone()), client };
    let code = seed(args, &job, &fetcher, done, state_path).await;
    // The seed's upstream transactions go on the month's bill (no housekeeping tick runs here).
    if let Err(e) = state.bill.close().await {
        tracing::warn!(error = %e, "seed: the bill's counts could not be stored");
    }
    state.cache.close().await;
    drop(built);
    code
}

/// The run, its state file and its report.
async fn seed<F: Fetcher>(args: &SeedArgs, job: &Job, fetcher: &F, mut done: Done, state_path: &Path) -> ExitCode {
    let progress = Progress::new(job.total, done.count(), progress_bar(args.quiet));
    let stop = Stop::default();
    // Installed before the first fetch, not when the spawned task first runs.
    if let Some(signals) = crate::app::server::StopSignals::new() {
        actix_web::rt::spawn(stop_on_signal(signals, stop.clone()));
    }
    let hash = job.hash();
    let save = |done: &Done| {
        if let Err(e) = state_file::save(state_path, &hash, job.total, done) {
            tracing::warn!(error = %e, "seed: cannot save the resume state");
        }
    };
    let concurrency = usize::from(args.concurrency);
    let ending = run::run(job, fetcher, concurrency, &mut done, &progress, &stop, save).await;
    let counts = progress.counts();
    let complete = ending == Ending::Completed && counts.failed == 0;
    let kept =
        if complete { state_file::remove(state_path) } else { state_file::save(state_path, &hash, job.total, &done) };
    if let Err(e) = kept {
        eprintln!("tile-proxy seed: {e}");
    }
    let (word, code) = match &ending {
        Ending::Completed if counts.failed == 0 => ("done", ExitCode::SUCCESS),
        Ending::Completed => {
            eprintln!("{} tiles failed; run the same command to try them again", counts.failed);
            ("done", ExitCode::from(EXIT_FAILED))
        }
        Ending::Stopped(StopReason::Interrupted) => {
            eprintln!("interrupted; state saved to {}: run the same command to resume", state_path.display());
            ("interrupted", ExitCode::from(EXIT_INTERRUPTED))
        }
        Ending::Stopped(StopReason::BudgetExhausted { window, retry_after_secs }) => {
            let resets = humantime::format_duration(std::time::Duration::from_secs(*retry_after_secs));
            eprintln!(
                "the upstream budget of index {} is spent for the {window}; it resets in {resets}. State saved to {}: run the same command then to resume",
                job.params.index,
                state_path.display()
            );
            ("stopped", ExitCode::from(EXIT_BUDGET))
        }
    };
    println!("{}", summary(word, &progress));
    code
}

/// `seed done: 341 tiles, fetched 300, already cached 41, failed 0 in 2.3 s (148 tiles/s)`,
/// with `, done earlier N` before ` in` when resumed.
pub fn summary(word: &str, progress: &Progress) -> String {
    let c = progress.counts();
    let earlier = if progress.earlier > 0 { format!(", done earlier {}", progress.earlier) } else { String::new() };
    format!(
        "seed {word}: {} tiles, fetched {}, already cached {}, failed {}{earlier} in {:.1} s ({:.0} tiles/s)",
        progress.total,
        c.fetched,
        c.cached,
        c.failed,
        progress.elapsed().as_secs_f64(),
        progress.rate()
    )
}

fn announce(job: &Job, done: &Done, how: &str) -> String {
    let (zmin, zmax) = job.params.zoom;
    let resumed = if done.count() > 0 { format!(" ({} done earlier)", done.count()) } else { String::new() };
    format!("seeding {} tiles{resumed}, zoom {zmin}-{zmax}, {how}", job.total)
}

fn print_counts(job: &Job) {
    for (z, count) in job.per_zoom() {
        println!("zoom {z}: {count} tiles");
    }
    println!("total: {} tiles", job.total);
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tile-proxy seed: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// On a terminal unless `quiet`: done/total, rate, ETA and the counts.
fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    let template = "{bar:30} {pos}/{len} tiles, {per_sec}, ETA {eta} - {msg}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    bar
}

/// Warnings (failed tiles) on stderr, so stdout holds only the summary.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// SIGINT or SIGTERM stops the job (tiles in flight finish); a second one exits at once.
async fn stop_on_signal(mut signals: crate::app::server::StopSignals, stop: Stop) {
    signals.recv().await;
    stop.request(StopReason::Interrupted);
    signals.recv().await;
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}
