//! The reference designs measured beside the gateway in one run: `echo` (a bare actix-web
//! server that parses the same scan JSON and answers, no state: the machine's HTTP
//! ceiling) and `naive` (the stateless design a team writes first: per scan GET a dedup key,
//! INCR the counter, SET the dedup key, HSET the token, on one multiplexed connection).
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
