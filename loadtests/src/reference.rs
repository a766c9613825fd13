//! The reference designs measured beside the gateway in one run: `echo` (a bare actix-web
//! server that parses the same scan JSON and answers, no state: the machine's HTTP
//! ceiling) and `naive` (the stateless design a team writes first: per scan GET a dedup key,
//! INCR the counter, SET the dedup key, HSET the token and ZINCRBY the day's facility
//! board, one after the other on one multiplexed connection).
use actix_web::{web, App, HttpResponse, HttpServer};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use scan_gateway::ingress::validate::ScanRequest;
use serde_json::json;

fn day() -> String {
    jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap()).date().to_string()
}

async fn echo_scan(body: web::Json<ScanRequest>) -> HttpResponse {
    let s = body.into_inner();
    HttpResponse::Created().json(json!({
        "token_id": format!("echo-{}-{}", s.facility_id, s.counter_id),
        "token_number": 1,
        "facility_id": s.facility_id,
        "counter_id": s.counter_id,
        "status": "waiting",
        "repeat": false,
    }))
}

async fn naive_scan(body: web::Json<ScanRequest>, con: web::Data<MultiplexedConnection>) -> HttpResponse {
    let s = body.into_inner();
    let mut con = con.get_ref().clone();
    let day = day();
    let base = format!("naive:{}:{day}:{}", s.facility_id, s.counter_id);
    let dedup = format!("{base}:p:{}", s.patient.abha_address);
    let answer = |n: u64, repeat: bool| {
        let body = json!({"token_number": n, "facility_id": s.facility_id, "counter_id": s.counter_id,
            "service_date": day, "status": "waiting", "repeat": repeat});
        if repeat {
            HttpResponse::Ok().json(body)
        } else {
            HttpResponse::Created().json(body)
        }
    };
    let r: redis::RedisResult<u64> = async {
        if let Some(n) = con.get::<_, Option<u64>>(&dedup).await? {
            return Ok(n + (1 << 40));
        }
        let n: u64 = con.incr(format!("{base}:n"), 1).await?;
        let _: () = con.set_ex(&dedup, n, 86_400).await?;
        let record = json!({"n": n, "p": s.patient.abha_address, "name": s.patient.name}).to_string();
        let _: () =
            con.hset(format!("naive:{}:{day}:t", s.facility_id), format!("{}#{n}", s.counter_id), record).await?;
        // The gateway keeps its leaderboards live, so this design does too: one ZINCRBY per
        // new token on the national facilities board of the day, in the same sequential
        // style (a team's first design does not batch).
        let _: f64 = con.zincr(format!("naive:board:{day}:facilities"), &s.facility_id, 1).await?;
        Ok(n)
    }
    .await;
    match r {
        Ok(n) if n >= 1 << 40 => answer(n - (1 << 40), true),
        Ok(n) => answer(n, false),
        Err(_) => HttpResponse::ServiceUnavailable().json(json!({"error": {"code": "STORE_UNAVAILABLE"}})),
    }
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(16 * 1024)
}

/// Serves `echo` (no Redis) or `naive` (with `redis_url`) until interrupted.
pub async fn serve(kind: &str, listen: &str, workers: usize, redis_url: Option<&str>) -> anyhow::Result<()> {
    let con = match kind {
        "echo" => None,
        "naive" => {
            let url = redis_url.ok_or_else(|| anyhow::anyhow!("naive needs --redis-url"))?;
            Some(web::Data::new(redis::Client::open(url)?.get_multiplexed_async_connection().await?))
        }
        other => anyhow::bail!("unknown reference server {other:?} (echo or naive)"),
    };
    let server = HttpServer::new(move || {
        let app = App::new().app_data(json_config());
        match &con {
            None => app.route("/v1/scans", web::post().to(echo_scan)),
            Some(con) => app.app_data(con.clone()).route("/v1/scans", web::post().to(naive_scan)),
        }
    })
    .workers(workers)
    .bind(listen)?;
    let addr = server.addrs()[0];
    println!("{kind} listening on http://{addr}");
    server.run().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use actix_web::{test, App};

    use super::*;

    fn scan(patient: &str) -> serde_json::Value {
        json!({"facility_id": "IN0410000183", "counter_id": "OPD1", "patient": {
            "abha_address": patient, "name": "Load Test Patient", "gender": "F", "year_of_birth": 1980}})
    }

    /// The gateway keeps live leaderboards, so the design it is measured against keeps one
    /// too: one ZINCRBY per new token on the day's national facilities board, none for a
    /// repeat scan.
    #[actix_web::test]
    async fn naive_counts_each_new_token_on_the_days_facility_board() {
        let redis = crate::test_redis::Redis::start();
        let con = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let app = test::init_service(
            App::new()
                .app_data(json_config())
                .app_data(web::Data::new(con.clone()))
                .route("/v1/scans", web::post().to(naive_scan)),
        )
        .await;
        for (patient, status) in [("a@sbx", 201), ("b@sbx", 201), ("a@sbx", 200)] {
            let req = test::TestRequest::post().uri("/v1/scans").set_json(scan(patient)).to_request();
            assert_eq!(test::call_service(&app, req).await.status().as_u16(), status, "{patient}");
        }
        let mut con = con;
        let score: Option<f64> = con.zscore(format!("naive:board:{}:facilities", day()), "IN0410000183").await.unwrap();
        assert_eq!(score, Some(2.0), "two new tokens; the repeat scan adds none");
    }
}
