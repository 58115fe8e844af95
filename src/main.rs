//! `m2pool-payment`: parse the command line, set up tracing, load the config,
//! and run the daemon until SIGTERM or SIGINT, or run one of the small tools
//! (`sign`, `check-config`, `wallet`, `webhook`; see [`cli`]).

mod cli;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command, SHUTDOWN_LIMIT};
use tokio_util::sync::CancellationToken;
use tracing::error;

fn main() -> Result<()> {
    let cli = Cli::parse_from(cli::go_style_args(std::env::args()));
    match &cli.command {
        Some(Command::CheckConfig) => cli::check_config(&cli),
        Some(Command::Sign { file }) => cli::sign(&cli, file),
        Some(Command::Wallet(cmd)) => cli::wallet(&cli, cmd),
        Some(Command::Webhook(cmd)) => cli::webhook(&cli, cmd),
        None | Some(Command::Run) => daemon(&cli),
    }
}

/// Runs the daemon; a shutdown that takes longer than [`SHUTDOWN_LIMIT`]
/// exits anyway (what was not committed is redelivered or resent at the next
/// start).
fn daemon(cli: &Cli) -> Result<()> {
    let config = cli::load_config(cli)?;
    let scrubber = cli::scrubber(&config);
    let _log_guard = cli::init_tracing(
        cli::json_logs(cli, &config),
        config.log.main_log_dir.as_deref(),
        scrubber.clone(),
    );
    let secrets = cli::secrets(cli)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let stopped = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cli::shutdown_signal(shutdown.clone()));
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_LIMIT).await;
        };
        tokio::select! {
            r = m2pool_payment::run(config, secrets, shutdown.clone()) => Some(r),
            _ = deadline => None,
        }
    });
    match stopped {
        // The error names what failed; node URLs in it keep their secrets.
        Some(r) => r.map_err(|e| anyhow::anyhow!("{}", scrubber.scrub(&e.to_string()))),
        None => {
            error!(
                limit_secs = SHUTDOWN_LIMIT.as_secs(),
                "did not stop in time; exiting anyway"
            );
            std::process::exit(1);
        }
    }
}
