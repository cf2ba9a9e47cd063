//! `agent-runtime` binary: parses flags, sets up logging and runs the server until SIGTERM/SIGINT.

use clap::Parser;

use agent_runtime::config::{Action, Config, LogFormat};
use agent_runtime::launch;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    match &config.action {
        None => {}
        Some(Action::Install { dir }) => {
            let dest = launch::install(dir)?;
            println!("installed {}", dest.display());
            return Ok(());
        }
        Some(Action::Start {
            log_file,
            wait_seconds,
        }) => {
            let argv: Vec<String> = std::env::args().collect();
            let probe = *config
                .listen
                .first()
                .ok_or_else(|| anyhow::anyhow!("no --listen address"))?;
            let wait = std::time::Duration::from_secs(*wait_seconds);
            launch::start(&launch::daemon_args(&argv), probe, log_file, wait)?;
            return Ok(());
        }
    }
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("agent-runtime")
        .build()?;
    runtime.block_on(agent_runtime::server::run(config))
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AGENT_RUNTIME_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
