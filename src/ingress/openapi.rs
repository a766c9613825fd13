//! `GET /openapi.json`, generated from the handlers' annotations.
use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "scan-gateway", description = "National Scan & Share OPD token gateway"),
    paths(
        super::scans::create,
        super::scans::create_for_facility,
        super::counters::get_token,
        super::counters::act,
        super::counters::call_next,
        super::counters::queue,
        super::facilities::put,
        super::facilities::get,
        super::facilities::import,
        super::facilities::create_staff_key,
        super::facilities::revoke_staff_key,
        super::leaderboards::get,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

pub async fn spec() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
