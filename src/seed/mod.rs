//! Seeding (warming the cache): `tile-proxy seed` and `POST /admin/seed`. Being written.

use std::process::ExitCode;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::service::TileService;

/// The flags of `tile-proxy seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Index (`indice`) to seed for
    #[arg(long)]
    pub index: String,
}

/// The seed jobs a pod runs (`POST /admin/seed`).
#[derive(Default)]
pub struct Jobs {}

/// `tile-proxy seed`.
pub fn run_cli(_args: SeedArgs) -> ExitCode {
    ExitCode::FAILURE
}

/// `POST /admin/seed`.
pub async fn api_start(
    _req: HttpRequest,
    _body: web::Bytes,
    _service: web::Data<TileService>,
    _client: web::Data<awc::Client>,
) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}

/// `GET /admin/seed/{id}`.
pub async fn api_status(_req: HttpRequest, _id: web::Path<String>, _service: web::Data<TileService>) -> HttpResponse {
    HttpResponse::NotImplemented().finish()
}
