//! Per-index statistics: `GET /admin/stats` and `tile-proxy stats`. Being written.

use std::process::ExitCode;

use crate::config::StatsArgs;

/// `tile-proxy stats`.
pub fn run_cli(_args: &StatsArgs) -> ExitCode {
    ExitCode::FAILURE
}
