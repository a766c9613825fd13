//! The `scan-gateway` binary: wiring only. `serve` runs the gateway; `facilities import`
//! loads a registry file (CSV or NDJSON) straight into Redis.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use scan_gateway::clock::SystemClock;
use scan_gateway::config::{Settings, EXIT_BAD_CONFIG};
use scan_gateway::persistence::Store;
use scan_gateway::registry::import::{self, Format};
use scan_gateway::startup::Application;
use scan_gateway::telemetry;

#[derive(Parser)]
#[command(name = "scan-gateway", version, about = "National Scan & Share OPD token gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (the default).
    Serve,
    /// Facility registry tools.
    Facilities {
        #[command(subcommand)]
        command: FacilitiesCmd,
    },
}

#[derive(Subcommand)]
enum FacilitiesCmd {
    /// Import facilities from a .csv or .ndjson file; all rows or none.
    Import { file: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scan-gateway: configuration error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    telemetry::init_logging(&settings.log);
    let result = match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => actix_rt::System::new().block_on(serve(settings)),
        Cmd::Facilities { command: FacilitiesCmd::Import { file } } => {
            actix_rt::System::new().block_on(import_file(settings, file))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scan-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listen = settings.listen.clone();
    scan_gateway::heap::spawn_trimmer(Duration::from_secs(settings.heap_trim_s))?;
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
    // Exactly one line on stdout: tools and tests read the bound port from it.
    println!("scan-gateway listening on http://{host}:{}", app.port());
    app.run_until_stopped().await
}

async fn import_file(settings: Settings, file: String) -> anyhow::Result<()> {
    let format = Format::from_path(&file).ok_or_else(|| anyhow::anyhow!("{file}: expected a .csv or .ndjson file"))?;
    let data = std::fs::read(&file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let infos = match import::parse(format, &data, &settings.default_timezone, settings.default_token_validity_s) {
        Ok(i) => i,
        Err(lines) => {
            for l in &lines {
                eprintln!("{file}:{}: {} {}", l.line, l.code, l.message);
            }
            anyhow::bail!("{} invalid line(s); nothing imported", lines.len());
        }
    };
    let target = settings.redis_target().ok_or_else(|| anyhow::anyhow!("SCANGW_REDIS_URL is malformed"))?;
    let store = Store::open(&target, Duration::from_millis(settings.redis_timeout_ms.max(5000)))?;
    let items: Vec<(String, String)> =
        infos.iter().map(|i| (i.facility_id.clone(), serde_json::to_string(i).expect("serialises"))).collect();
    let created = store.put_infos(&items).await.map_err(|e| anyhow::anyhow!("storing facilities: {e}"))?;
    println!("imported {} facilities ({} new)", items.len(), created);
    Ok(())
}
