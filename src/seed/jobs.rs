//! The seed jobs a pod runs for `POST /admin/seed` ([`Jobs`]): at most [`MAX_JOBS`] kept, the
//! oldest finished one dropped for a new one. A job lives as long as the pod.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::seed::run::Progress;

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
}
