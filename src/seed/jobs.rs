//! The seed jobs a pod runs for `POST /admin/seed` ([`Jobs`]): at most [`MAX_JOBS`] kept, the
//! oldest finished one dropped for a new one. A job lives as long as the pod. With Redis the
//! jobs belong to the fleet instead ([`super::fleet`]); this list then only holds the jobs
//! started while Redis did not answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::seed::run::{Ending, Progress, StopReason};

/// Jobs kept in memory.
pub const MAX_JOBS: usize = 100;

/// One job started through the API.
pub struct ApiJob {
    pub id: String,
    pub index: String,
    pub progress: Arc<Progress>,
}

/// The seed jobs a pod runs (`POST /admin/seed`), oldest first.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<VecDeque<Arc<ApiJob>>>,
}

impl Jobs {
    /// Adds a job, dropping the oldest finished one when full; false when every kept job is
    /// still running.
    pub fn add(&self, job: Arc<ApiJob>) -> bool {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= MAX_JOBS {
            match jobs.iter().position(|j| j.progress.ended().is_some()) {
                Some(i) => drop(jobs.remove(i)),
                None => return false,
            }
        }
        jobs.push_back(job);
        true
    }

    /// The job `id`, if it is kept.
    pub fn get(&self, id: &str) -> Option<Arc<ApiJob>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|j| j.id == id).cloned()
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<Arc<ApiJob>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().cloned().collect()
    }
}

/// A job's `state` and `message` as the API shows them: `running` (no ending yet), `done`,
/// `failed` (tiles failed after retries), `budget_exhausted`, `interrupted`.
pub fn state_of(ending: Option<&Ending>, failed: u64, index: &str) -> (&'static str, Option<String>) {
    match ending {
        None => ("running", None),
        Some(Ending::Completed) if failed == 0 => ("done", None),
        Some(Ending::Completed) => ("failed", Some(format!("{failed} tiles failed after retries"))),
        Some(Ending::Stopped(StopReason::BudgetExhausted { window, retry_after_secs })) => (
            "budget_exhausted",
            Some(format!(
                "index {index} has spent its upstream budget for the {window}; it resets in {retry_after_secs} s"
            )),
        ),
        Some(Ending::Stopped(StopReason::Interrupted)) => ("interrupted", Some("stopped".to_string())),
    }
}
