//! Wiring: builds the stores, the workers and the consumer from the settings, and runs them
//! until a shutdown trigger arrives. Nothing in the library imports this module.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::batcher::Limits;
use crate::config::{Settings, StartWithoutWatermark};
use crate::consumer::{self, ConsumerSettings, OffsetStore, StoreFuture};
use crate::dead_letter::DeadLetterPolicy;
use crate::identity::Binding;
use crate::metrics::Metrics;
use crate::model::TopicPartition;
use crate::notify;
use crate::redact::Redactor;
use crate::shutdown::{AbortReason, Shutdown};
use crate::sink::SinkError;
use crate::sink::postgres::PgSink;
use crate::sink::retry::retry;
use crate::stores;
use crate::worker::{Worker, WorkerContext};

/// How the daemon ended. The numbers are the process exit codes documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything read was made durable and committed (or nothing had started yet).
    Clean = 0,
    /// The shutdown deadline passed: unfinished batches were rolled back and not committed.
    DeadlineExceeded = 3,
    /// A second signal cut the drain short, with the same safety as a deadline.
    Aborted = 4,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] SinkError),
    #[error(transparent)]
    Consumer(#[from] consumer::ConsumerError),
    #[error("the Kafka consumer thread panicked")]
    ConsumerPanicked,
    #[error("cannot serve http on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// PostgreSQL's stored next offsets of one consumer group: where assigned partitions start.
struct GroupOffsets {
    pg: PgSink,
    group_id: String,
}

impl OffsetStore for GroupOffsets {
    fn load<'a>(
        &'a self,
        tps: &'a [TopicPartition],
    ) -> StoreFuture<'a, HashMap<TopicPartition, i64>> {
        Box::pin(async move {
            self.pg
                .load_offsets(&self.group_id, tps)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn bindings<'a>(&'a self, names: &'a [String]) -> StoreFuture<'a, Vec<Binding>> {
        Box::pin(async move { self.pg.bindings(names).await.map_err(|e| e.to_string()) })
    }

    fn bind(&self, binding: Binding) -> StoreFuture<'_, Binding> {
        Box::pin(async move { self.pg.bind(&binding).await.map_err(|e| e.to_string()) })
    }
}

/// `log-processor migrate`: applies the schema and exits.
pub async fn migrate(settings: &Settings) -> Result<(), AppError> {
    settings.validate()?;
    let pg = stores::postgres(settings, settings.pg_pool_size())?;
    pg.migrate().await?;
    pg.prepare_tables(crate::config::MigrateMode::Auto).await?;
    pg.close().await;
    Ok(())
}

/// Runs the daemon until `triggers` yields: the first item starts a graceful shutdown, a
/// second one aborts it. The binary feeds SIGTERM/SIGINT here; tests feed a channel.
pub async fn run(
    settings: Settings,
    triggers: impl Stream<Item = &'static str> + Send + Unpin + 'static,
) -> Result<Exit, AppError> {
    settings.validate()?;
    let shutdown = Shutdown::new(settings.shutdown_deadline_ms.0);
    let metrics = Arc::new(Metrics::default());
    // The consumer thread's longest legitimate silence is a rebalance callback: a revocation
    // drain (below the session timeout) plus reads bounded at 5 s each.
    metrics.set_liveness_bound(settings.liveness_timeout());
    tokio::spawn(watch_triggers(triggers, shutdown.clone(), metrics.clone()));
    tokio::spawn(systemd_watchdog(metrics.clone()));

    let http_stop = CancellationToken::new();
    let listener = TcpListener::bind(settings.http_addr)
        .await
        .map_err(|source| AppError::Http {
            addr: settings.http_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().map_err(|source| AppError::Http { addr: settings.http_addr, source })?, "http listening");
    tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        http_stop.clone(),
    ));
    let _stop_http = http_stop.drop_guard();

    // Start-up: a signal here ends the daemon at once; stores that are down are waited for.
    let mapping = stores::mapping(&settings)?;
    let pg = stores::postgres_with(&settings, settings.pg_pool_size(), mapping.clone())?;
    let es = stores::elasticsearch_with(&settings, mapping.clone())?;
    let lifecycle = settings.lifecycle()?;
    let kafka_reader = stores::kafka_reader(&settings, "log-processor-retention")?;
    let startup = async {
        retry(
            "postgresql migration",
            stores::backoff(&settings),
            &shutdown.drain,
            || {},
            || async {
                pg.prepare(settings.migrate).await?;
                pg.prepare_tables(settings.migrate).await
            },
        )
        .await?;
        let store = retry(
            "elasticsearch version detection",
            stores::backoff(&settings),
            &shutdown.drain,
            || {},
            || es.detect(),
        )
        .await?;
        store.require_supported()?;
        tracing::info!(search_store = %store, data_stream = settings.es_data_stream, "search store detected");
        if let Some(lifecycle) = &lifecycle {
            crate::consumer::retention::check(&settings, kafka_reader.clone(), lifecycle).await?;
            retry(
                "elasticsearch lifecycle policy",
                stores::backoff(&settings),
                &shutdown.drain,
                || {},
                || es.ensure_lifecycle(&store),
            )
            .await?;
        }
        retry(
            "elasticsearch index template",
            stores::backoff(&settings),
            &shutdown.drain,
            || {},
            || es.ensure_template(&store),
        )
        .await?;
        Ok::<_, SinkError>(())
    };
    match startup.await {
        Ok(()) => {}
        Err(SinkError::Cancelled) => {
            shutdown.phase("exit during start-up");
            return Ok(Exit::Clean);
        }
        Err(e) => return Err(e.into()),
    }
    let runtime_threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(runtime_threads, "stores ready");

    let redactor = Redactor::new(
        settings.redact_drop.clone(),
        settings.redact_hash.clone(),
        settings.redact_key.as_deref(),
    );
    let dead_letter_key = settings.dead_letter_key()?;
    let ctx = Arc::new(WorkerContext {
        group_id: settings.group_id.clone(),
        pg: Box::new(pg.clone()),
        es: Box::new(es),
        dead_letters: DeadLetterPolicy::new(redactor.clone(), dead_letter_key),
        redactor,
        max_record_bytes: settings.max_record_bytes,
        backoff: stores::backoff(&settings),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        mapping: mapping.clone(),
        replays: Default::default(),
    });
    // Parked records go back to their destinations until shutdown begins (a round cut short
    // is the same as a kill: the next run does it again).
    tokio::spawn(
        crate::parking::Parking {
            pg: pg.clone(),
            es: stores::elasticsearch_with(&settings, mapping.clone())?,
            metrics: metrics.clone(),
            interval: settings.parked_retry_ms.0,
        }
        .run(shutdown.drain.clone()),
    );
    // Rows stored before a mapped column was added get its value, beside the pipeline; a
    // run stopped by shutdown goes on at the next start.
    let filling = pg.clone();
    let stop_filling = shutdown.drain.clone();
    tokio::spawn(async move {
        if let Err(e) = filling.fill_columns(&stop_filling).await {
            tracing::error!("mapping: filling added columns stopped: {e}; the next start goes on");
        }
    });
    if !settings.audit_interval_ms.0.is_zero() {
        tokio::spawn(
            crate::audit::sample::Sampler {
                pg: pg.clone(),
                es: stores::elasticsearch_with(&settings, mapping.clone())?,
                metrics: metrics.clone(),
                group_id: settings.group_id.clone(),
                interval: settings.audit_interval_ms.0,
                size: settings.audit_sample,
            }
            .run(shutdown.drain.clone()),
        );
    }
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let mut senders = Vec::with_capacity(settings.workers);
    let mut workers = Vec::with_capacity(settings.workers);
    for id in 0..settings.workers {
        let (tx, rx) = tokio::sync::mpsc::channel(settings.worker_queue);
        senders.push(tx);
        let worker = tokio::spawn(
            Worker {
                id,
                queue: rx,
                acks: ack_tx.clone(),
                ctx: ctx.clone(),
                in_flight: settings.worker_in_flight,
            }
            .run(),
        );
        workers.push(worker.abort_handle());
        tokio::spawn(exit_if_ends_early(id, worker, shutdown.clone()));
    }
    drop(ack_tx); // only workers hold ack senders: the channel closes when the last one exits

    let consumer_settings = ConsumerSettings {
        brokers: settings.kafka_brokers.clone(),
        group_id: settings.group_id.clone(),
        topics: settings.topic_selection()?.entries().to_vec(),
        topic_refresh: settings.topic_refresh(),
        session_timeout: settings.session_timeout_ms.0,
        max_poll_interval: settings.max_poll_interval_ms.0,
        queue_kbytes: settings.kafka_queue_kbytes,
        fetch_max_bytes: settings.kafka_fetch_max_bytes,
        receive_max_bytes: settings.kafka_receive_max_bytes(),
        limits: Limits {
            max_records: settings.batch_max_records,
            max_bytes: settings.batch_max_bytes,
            linger: settings.batch_linger_ms.0,
        },
        memory_budget_bytes: settings.memory_budget_mb * 1024 * 1024,
        commit_interval: settings.commit_interval_ms.0,
        revoke_drain_timeout: settings.revoke_drain_timeout(),
        group_stall_timeout: settings.group_stall_timeout(),
        client_properties: consumer::ClientProperties(settings.security.kafka_properties()?),
        start_without_watermark: match settings.start_without_watermark {
            StartWithoutWatermark::Earliest => consumer::NoWatermark::Earliest,
            StartWithoutWatermark::Committed => consumer::NoWatermark::Committed,
        },
    };
    let offsets = Arc::new(GroupOffsets {
        pg: pg.clone(),
        group_id: settings.group_id.clone(),
    });
    let thread = consumer::spawn(
        consumer_settings,
        offsets,
        senders,
        ack_rx,
        shutdown.clone(),
        metrics.clone(),
    )?;
    let consumer_done = tokio::task::spawn_blocking(move || thread.join());

    // The consumer thread ends after the drain; the hard deadline bounds the whole sequence.
    let hard_deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.drain.cancelled().await;
            let at = shutdown.hard_deadline().unwrap_or_else(Instant::now);
            tokio::time::sleep_until(at.into()).await;
        }
    };
    let report = tokio::select! {
        r = consumer_done => match r {
            Ok(Ok(report)) => Some(report),
            _ => return Err(AppError::ConsumerPanicked),
        },
        _ = hard_deadline => {
            tracing::error!("shutdown deadline reached before the consumer closed; exiting without waiting for it");
            None
        }
    };
    for w in workers {
        w.abort();
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), pg.close()).await;

    let exit = match (shutdown.abort_reason(), &report) {
        (AbortReason::SecondSignal, _) => Exit::Aborted,
        (AbortReason::Deadline, _) | (_, None) => Exit::DeadlineExceeded,
        // Batches given up without the deadline biting (not started yet, or refused by a store
        // once shutdown began) are uncommitted and read again by the next owner: a clean exit.
        _ => Exit::Clean,
    };
    metrics.shutdown_ms.store(shutdown.elapsed_ms(), Relaxed);
    tracing::info!(target: "log_processor::shutdown", phase = "exit", elapsed_ms = shutdown.elapsed_ms(), exit_code = exit as i32, "shutdown: exit");
    Ok(exit)
}

/// With systemd's `WatchdogSec`, pings `WATCHDOG=1` at half the interval while liveness holds,
/// so a wedged consumer thread gets the service restarted.
async fn systemd_watchdog(metrics: Arc<Metrics>) {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&u| u > 0)
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
    loop {
        tick.tick().await;
        match metrics.liveness() {
            Ok(()) => notify::send("WATCHDOG=1"),
            Err(silent) => tracing::error!(
                silent_s = silent.as_secs(),
                "the kafka consumer thread is silent; not pinging the systemd watchdog"
            ),
        }
    }
}

/// A worker ends only after the drain began. One that ends before (a panic) would leave its
/// partitions paused for good, so the process exits 1 for its supervisor to restart it.
async fn exit_if_ends_early(id: usize, worker: tokio::task::JoinHandle<()>, shutdown: Shutdown) {
    let outcome = worker.await;
    if !shutdown.drain.is_cancelled() {
        let why = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        tracing::error!(
            worker = id,
            why,
            "a worker ended unexpectedly; exiting (code 1) so the daemon is restarted"
        );
        std::process::exit(1);
    }
}

/// First trigger: graceful shutdown with a deadline. Second trigger: abort.
async fn watch_triggers(
    mut triggers: impl Stream<Item = &'static str> + Unpin,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) {
    let Some(first) = triggers.next().await else {
        return;
    };
    // Log, turn not-ready and tell systemd before cancelling anything: once `drain` is
    // cancelled the daemon may exit at once (a signal during start-up).
    tracing::info!(target: "log_processor::shutdown", phase = "signal received", signal = first, elapsed_ms = 0u64, "shutdown: signal received");
    metrics.set_not_ready();
    notify::send("STOPPING=1");
    shutdown.begin();
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            if let Some(at) = shutdown.abort_at() {
                tokio::time::sleep_until(at.into()).await;
            }
        }
    };
    tokio::select! {
        Some(second) = triggers.next() => {
            tracing::warn!(target: "log_processor::shutdown", phase = "second signal", signal = second, elapsed_ms = shutdown.elapsed_ms(), "shutdown: second signal, aborting in-flight work");
            shutdown.abort(AbortReason::SecondSignal);
        }
        _ = deadline => {
            if !shutdown.abort.is_cancelled() {
                tracing::warn!(target: "log_processor::shutdown", phase = "deadline", elapsed_ms = shutdown.elapsed_ms(), "shutdown: deadline reached, abandoning in-flight batches");
                shutdown.abort(AbortReason::Deadline);
            }
        }
    }
}
