//! The `sluice` binary: parse the CLI, load settings, start logging, run until SIGINT or SIGTERM.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Resumable, persistent event streams on Kafka")]
struct Cli {
    /// Settings file; `SLUICE__SECTION__KEY` environment variables override it.
    #[arg(long, short, env = "SLUICE_CONFIG", default_value = "settings.toml")]
    config: PathBuf,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "SIGTERM handler not installed");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = sluice::Settings::load(Some(&cli.config))?;
    sluice::telemetry::init(&settings.log);
    tracing::info!(config = %cli.config.display(), settings = %settings.redacted(), "effective configuration");
    let app = sluice::App::build(settings).await?;
    app.run(shutdown_signal()).await
}
