//! The router bypass: tile requests skip actix's router ([`TilesFirst`]).

use actix_web::web;

use crate::http::state::State;
use crate::http::tile::tile;

/// Sends every request the router would give to [`tile`] (its default service) straight there:
/// actix's router (a match per route, the path's segments captured and dropped) and the
/// handler's extractors cost a tile hit about 1,500 instructions for nothing. `/live`,
/// `/ready`, `/health`, everything under `/admin` and any path with a `%` (the router matches
/// paths requoted) still go through the router, so what answers a request does not change.
pub struct TilesFirst;

/// True for the paths some route other than the default service may want.
pub(crate) fn for_the_router(path: &str) -> bool {
    matches!(path, "/live" | "/ready" | "/health" | "/metrics") || path.starts_with("/admin") || path.contains('%')
}

impl<S> actix_web::dev::Transform<S, actix_web::dev::ServiceRequest> for TilesFirst
where
    S: actix_web::dev::Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        > + 'static,
{
    type Response = actix_web::dev::ServiceResponse;
    type Error = actix_web::Error;
    type Transform = TilesFirstService<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(TilesFirstService { service }))
    }
}

pub struct TilesFirstService<S> {
    service: S,
}

impl<S> actix_web::dev::Service<actix_web::dev::ServiceRequest> for TilesFirstService<S>
where
    S: actix_web::dev::Service<
            actix_web::dev::ServiceRequest,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        > + 'static,
{
    type Response = actix_web::dev::ServiceResponse;
    type Error = actix_web::Error;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::LocalBoxFuture<'static, Result<actix_web::dev::ServiceResponse, actix_web::Error>>,
    >;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: actix_web::dev::ServiceRequest) -> Self::Future {
        use futures_util::future::Either;
        let found = || {
            let state = State::of(req.request())?;
            let client = req.app_data::<web::Data<awc::Client>>()?.clone();
            Some((state, client))
        };
        match found() {
            Some((state, client)) if !for_the_router(req.path()) => {
                let (http, _payload) = req.into_parts();
                Either::Right(Box::pin(async move {
                    let res = tile(http.clone(), state, client).await;
                    Ok(actix_web::dev::ServiceResponse::new(http, res))
                }))
            }
            _ => Either::Left(self.service.call(req)),
        }
    }
}
