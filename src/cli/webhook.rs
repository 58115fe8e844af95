//! `webhook dead` and `webhook replay`: the dead list of webhook deliveries
//! and sending them again (docs/architecture.md, "Webhooks"). They work on
//! the message store the config names, beside a running daemon, whose
//! dispatcher picks replayed deliveries up within a second.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use m2pool_payment::config::Config;
use m2pool_payment::store::Store;

#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// List dead deliveries, oldest first (URLs without their query).
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Send dead deliveries again, with a fresh retry window, in order per
    /// request.
    Replay {
        /// These deliveries (ids from `webhook dead`).
        #[arg(long = "id", required_unless_present = "all")]
        ids: Vec<i64>,
        /// Every dead delivery.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// Runs a webhook command on its own runtime.
pub(crate) fn run(config: &Config, cmd: &WebhookCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let store = match &config.msg_mysql {
            Some(m) => Store::open_mysql(m).await,
            None => Store::open(&config.msg_store).await,
        }
        .context("opening the message store")?;
        let out = command(&store, cmd).await;
        store.close().await;
        out
    })
}

async fn command(store: &Store, cmd: &WebhookCommand) -> Result<()> {
    match cmd {
        WebhookCommand::Dead { limit } => {
            let dead = store.dead_webhooks(*limit).await?;
            if dead.is_empty() {
                println!("no dead webhook deliveries");
            }
            for d in dead {
                let mut url = url::Url::parse(&d.url).map_or_else(
                    |_| d.url.clone(),
                    |mut u| {
                        u.set_query(None);
                        u.to_string()
                    },
                );
                url.truncate(200);
                println!(
                    "id={} stream_id={} kind={} attempts={} dead_at_ms={} url={} error={}",
                    d.id,
                    d.seq,
                    d.kind,
                    d.attempts,
                    d.dead_at.unwrap_or_default(),
                    url,
                    d.error.as_deref().unwrap_or("")
                );
            }
        }
        WebhookCommand::Replay { ids, all } => {
            if !*all && ids.is_empty() {
                bail!("name deliveries with --id, or replay them all with --all");
            }
            let n = store
                .replay_webhooks((!*all).then_some(ids.as_slice()))
                .await?;
            println!("{n} webhook deliveries queued again");
        }
    }
    Ok(())
}
