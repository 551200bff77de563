//! Application wiring: builds every component from the settings, binds the listener (port 0 is
//! fine, the real address is returned), runs them under one cancellation tree, and shuts down in a
//! fixed order.
//!
//! Shutdown order, each step bounded by `shutdown.grace_period`: stop edge accepts and end
//! subscriptions, stop intake (its stored offsets cover only durably registered requests and are
//! committed as it exits), checkpoint running streams, flush the producer, flush RocksDB.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::edge::grpc::GrpcServer;
use crate::edge::{self, EdgeState};
use crate::handlers::http::HttpSource;
use crate::handlers::kafka::{KafkaSource, Tails};
use crate::handlers::Registry;
use crate::kafka::changelog::follower::Owned;
use crate::kafka::changelog::{Changelog, Follower};
use crate::kafka::intake::Intake;
use crate::kafka::producer::Journal;
use crate::kafka::reader::Reader;
use crate::kafka::txn::Transactions;
use crate::metrics::Metrics;
use crate::retention::{Sweeper, TopicBudget};
use crate::settings::{Settings, SourceSettings};
use crate::store::Store;
use crate::stream::hub::Hub;
use crate::stream::ownership::{Ownership, Parts};
use crate::stream::pool::Pool;
use crate::stream::provider::Provider;
use crate::stream::records::Records;
use crate::stream::remote::RemoteTails;
use crate::stream::subscription::Subscriptions;

/// A built, not yet running, Sluice.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    grpc: GrpcServer,
    grpc_addr: SocketAddr,
    settings: Settings,
    journal: Arc<Journal>,
    store: Store,
    pool: Pool,
    intake: Intake,
    follower: Follower,
    remote: Arc<RemoteTails>,
    ownership: Arc<Ownership>,
    txn_events: tokio::sync::mpsc::UnboundedReceiver<crate::kafka::txn::Event>,
    edge: Arc<EdgeState>,
    sweeper: Sweeper,
    streams: TaskTracker,
    subscriptions: TaskTracker,
    sources: TaskTracker,
    stream_stop: CancellationToken,
    edge_stop: CancellationToken,
}

impl App {
    /// Builds Sluice with the handlers the settings configure.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        App::build_with(settings, Registry::new()).await
    }

    /// Builds Sluice with the handlers the settings configure plus `extra` (which wins on a
    /// clash), such as handlers written in Rust.
    pub async fn build_with(settings: Settings, extra: Registry) -> anyhow::Result<App> {
        settings.validate()?;
        let mut kinds: Vec<String> = settings.handlers.sources.keys().cloned().collect();
        if settings.handlers.demo.enabled {
            kinds.push(DEMO.to_owned());
        }
        kinds.extend(extra.kinds().map(str::to_owned));
        let metrics = Arc::new(Metrics::new()?.with_kinds(kinds));
        let sources = TaskTracker::new();
        let stream_stop = CancellationToken::new();
        let tails = Arc::new(Tails::new(
            settings.kafka.clone(),
            metrics.clone(),
            sources.clone(),
            stream_stop.clone(),
        ));
        let mut registry = configured_handlers(&settings, &tails, &metrics)?;
        registry.extend(extra);
        let registry = Arc::new(registry);
        let store = Store::open(&settings.store.path)?;
        let journal = Arc::new(Journal::new(&settings.kafka, metrics.clone())?);
        let reader = Arc::new(Reader::new(&settings.kafka)?);
        ensure_intake_topics(&journal, &settings).await?;
        // Ownership follows the intake topic's real partition count, which an operator may have
        // set when creating it; the changelog must match it.
        let partitions = journal
            .partition_count(&settings.intake.topic)
            .await
            .context("intake topic metadata")?;
        let txns = Arc::new(Transactions::default());
        let changelog = Arc::new(Changelog::new(
            journal.clone(),
            txns.clone(),
            &settings.intake.changelog(),
            partitions,
        ));
        changelog
            .ensure(settings.kafka.stream_topic_replication)
            .await
            .context("changelog topic")?;
        let records = Records::new(store.clone(), changelog.clone());
        let hub = Hub::new();
        let streams = TaskTracker::new();
        let subscriptions = TaskTracker::new();
        let edge_stop = CancellationToken::new();
        let provider = Arc::new(Provider {
            journal: journal.clone(),
            reader: reader.clone(),
            records: records.clone(),
            txns: txns.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            registry: registry.clone(),
            settings: settings.provider.clone(),
        });
        let existing = store.scan().await?.len();
        let budget = Arc::new(TopicBudget::new(
            settings.retention.max_stream_topics,
            existing,
        ));
        metrics.stream_topics_in_use(existing);
        let owned = Arc::new(Owned::default());
        let sweeper = Sweeper {
            records: records.clone(),
            owned: owned.clone(),
            journal: journal.clone(),
            budget: budget.clone(),
            metrics: metrics.clone(),
            settings: settings.retention.clone(),
        };
        let pool = Pool::new(
            provider,
            streams.clone(),
            stream_stop.clone(),
            budget.clone(),
        );
        let follower = Follower::new(
            &settings.kafka,
            &changelog,
            store.clone(),
            owned.clone(),
            metrics.clone(),
        )?;
        let (ownership, txn_events) = Ownership::new(
            pool.clone(),
            Parts {
                owned,
                positions: follower.positions(),
                client: follower.client(),
                changelog_topic: changelog.topic().to_owned(),
                txns,
            },
            &settings.kafka,
            &settings.intake,
            metrics.clone(),
            settings.shutdown.grace_period,
            streams.clone(),
        );
        let ownership = Arc::new(ownership);
        let intake = Intake::new(
            &settings.kafka,
            &settings.intake,
            journal.clone(),
            pool.clone(),
            hub.clone(),
            registry.clone(),
            metrics.clone(),
            ownership.clone(),
        )?;
        let remote = RemoteTails::new(&settings.kafka, metrics.clone()).context("remote tail")?;
        let subs = Arc::new(Subscriptions {
            hub: hub.clone(),
            store: store.clone(),
            reader,
            journal: journal.clone(),
            metrics: metrics.clone(),
            settings: settings.edge.clone(),
            tracker: subscriptions.clone(),
            shutdown: edge_stop.clone(),
            remote: remote.clone(),
        });
        let rate = Arc::new(edge::limits::RequestRate::new(&settings.limits));
        let edge = Arc::new(EdgeState {
            subs,
            journal: journal.clone(),
            store: store.clone(),
            hub,
            registry,
            metrics: metrics.clone(),
            intake: settings.intake.clone(),
            edge: settings.edge.clone(),
            grpc: settings.grpc.clone(),
            intake_assigned: intake.assigned_flag(),
            intake_partitions: partitions,
            budget,
            auth: Arc::new(
                edge::auth::Authenticator::new(&settings.edge, &settings.auth)
                    .context("auth keys")?,
            ),
            limits: settings.limits.clone(),
            gate: Arc::new(edge::limits::Gate::new(&settings.limits)),
            rate: rate.clone(),
            subscribers: edge::limits::Slots::new(settings.limits.max_subscribers_per_stream),
            pending: edge::access::PendingOwners::default(),
            durable: match settings.durable.enabled {
                true => Some(
                    edge::durable::Durable::new(
                        edge::durable::log::Log::new(
                            journal.clone(),
                            &settings.kafka,
                            settings.durable.max_append_bytes,
                        ),
                        store.clone(),
                        &settings.durable,
                        metrics.clone(),
                        rate,
                        edge_stop.clone(),
                    )
                    .map_err(anyhow::Error::msg)
                    .context("durable streams")?,
                ),
                false => None,
            },
        });
        if let Some(d) = &edge.durable {
            let n = d.restore().await;
            let subs = d
                .restore_subs()
                .await
                .map_err(anyhow::Error::msg)
                .context("durable stream subscriptions")?;
            tracing::info!(
                streams = n,
                subscriptions = subs,
                "durable streams restored"
            );
        }
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("bind http.listen {}", settings.http.listen))?;
        let addr = listener.local_addr()?;
        if let Some(d) = &edge.durable {
            d.set_listen_addr(addr);
        }
        let grpc = GrpcServer::bind(settings.grpc.listen, edge.clone())
            .await
            .with_context(|| format!("bind grpc.listen {}", settings.grpc.listen))?;
        let grpc_addr = grpc.local_addr()?;
        Ok(App {
            listener,
            addr,
            grpc,
            grpc_addr,
            settings,
            journal,
            store,
            pool,
            intake,
            follower,
            remote,
            ownership,
            txn_events,
            edge,
            sweeper,
            streams,
            subscriptions,
            sources,
            stream_stop,
            edge_stop,
        })
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Runs until `shutdown` completes, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let grace = self.settings.shutdown.grace_period;
        tracing::info!(addr = %self.addr, grpc = %self.grpc_addr, "sluice is running");
        let tasks = TaskTracker::new();
        // Interrupted streams resume when the group assigns their partitions (`stream::ownership`),
        // after the follower restored them: the edge and /healthz never wait for them.
        let follower_stop = CancellationToken::new();
        let follower = {
            let stop = follower_stop.clone();
            let f = self.follower;
            tasks.spawn_blocking(move || f.run(stop))
        };
        let remote = {
            let (tails, stop) = (self.remote.clone(), self.edge_stop.clone());
            tasks.spawn_blocking(move || tails.run(stop))
        };
        let writers_stop = CancellationToken::new();
        tasks.spawn(
            self.ownership
                .clone()
                .watch(self.txn_events, writers_stop.clone()),
        );
        let intake_stop = CancellationToken::new();
        // The intake consumer, the changelog follower and the remote tail loop on blocking
        // threads, which a runtime waits for when it is dropped: if this future is dropped before
        // an orderly shutdown (a panicking caller), stop them too.
        let _stop_on_drop = (
            intake_stop.clone().drop_guard(),
            follower_stop.clone().drop_guard(),
            self.edge_stop.clone().drop_guard(),
            self.stream_stop.clone().drop_guard(),
        );
        let intake = tasks.spawn(self.intake.run(intake_stop.clone()));
        tasks.spawn(self.sweeper.run(intake_stop.clone()));
        let edge_stop = self.edge_stop.clone();
        let server = tasks.spawn(edge::serve::run(
            self.listener,
            edge::router(self.edge.clone()),
            self.edge.clone(),
            edge_stop.clone(),
        ));
        tasks.spawn(
            self.edge
                .auth
                .clone()
                .watch(self.edge.metrics.clone(), edge_stop.clone()),
        );
        tasks.spawn(sweep_request_rates(self.edge.clone(), edge_stop.clone()));
        if let Some(d) = &self.edge.durable {
            tasks.spawn(d.clone().run_sweeper(edge_stop.clone()));
            tasks.spawn(d.clone().run_subscriptions(edge_stop.clone()));
        }
        let grpc = tasks.spawn(self.grpc.serve(edge_stop.clone()));
        tasks.close();

        shutdown.await;
        tracing::info!("shutting down: stopping edge and intake");
        self.edge_stop.cancel();
        intake_stop.cancel();
        self.subscriptions.close();
        step("edge", grace, async {
            let _ = server.await;
            match grpc.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
                Ok(Ok(())) => {}
            }
            self.subscriptions.wait().await;
            if let Some(d) = &self.edge.durable {
                d.wait().await;
            }
            let _ = remote.await;
        })
        .await;
        step("intake", grace, async {
            let _ = intake.await;
        })
        .await;
        tracing::info!(active = self.pool.active(), "checkpointing running streams");
        self.stream_stop.cancel();
        self.streams.close();
        // Leaving the group revoked every partition; whatever is still held commits and closes.
        writers_stop.cancel();
        step("partition writers", grace, self.ownership.release_all()).await;
        step("streams", grace, self.streams.wait()).await;
        self.sources.close();
        step("source consumers", grace, self.sources.wait()).await;
        follower_stop.cancel();
        step("changelog follower", grace, async {
            let _ = follower.await;
        })
        .await;
        step("producer flush", grace, async {
            if let Err(e) = self.journal.flush(grace).await {
                tracing::warn!(error = %e, "producer flush incomplete");
            }
        })
        .await;
        step("store flush", grace, async {
            if let Err(e) = self.store.flush().await {
                tracing::warn!(error = %e, "store flush failed");
            }
        })
        .await;
        tasks.wait().await;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Forgets idle request-rate buckets every few seconds, so the table holds only active callers.
async fn sweep_request_rates(edge: Arc<EdgeState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => edge.rate.sweep(),
        }
    }
}

/// The built-in demo handler's kind.
const DEMO: &str = "demo:stream_ticks";

/// The handlers the settings configure: `demo:stream_ticks` unless `handlers.demo.enabled` is
/// false, and every `[handlers."service:action"]` source.
fn configured_handlers(
    settings: &Settings,
    tails: &Arc<Tails>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    let max_chunk = settings.provider.max_chunk_bytes;
    if settings.handlers.demo.enabled {
        registry.register(DEMO, crate::handlers::demo::Ticks::new(max_chunk));
    }
    for (kind, source) in &settings.handlers.sources {
        match source {
            SourceSettings::Kafka(k) => {
                registry.register(kind, KafkaSource::new(k.clone(), tails.clone()))
            }
            SourceSettings::Http(h) => {
                let http = HttpSource::new(h.clone(), metrics.clone(), max_chunk)
                    .map_err(|e| anyhow::anyhow!("handlers.\"{kind}\": {e}"))?;
                registry.register(kind, http);
            }
        }
    }
    Ok(registry)
}

async fn step(name: &str, grace: std::time::Duration, f: impl Future<Output = ()>) {
    if tokio::time::timeout(grace, f).await.is_err() {
        tracing::warn!(
            step = name,
            grace_ms = grace.as_millis() as u64,
            "shutdown step timed out"
        );
    }
}

async fn ensure_intake_topics(journal: &Journal, settings: &Settings) -> anyhow::Result<()> {
    let timeout = settings.kafka.operation_timeout;
    for topic in [&settings.intake.topic, &settings.intake.dlq_topic] {
        let create = journal.create_topic(
            topic,
            settings.intake.topic_partitions,
            settings.kafka.stream_topic_replication,
            &[],
        );
        tokio::time::timeout(timeout + std::time::Duration::from_secs(1), create)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "Kafka at {} did not answer within {:?} (kafka.brokers)",
                    settings.kafka.brokers,
                    timeout
                )
            })?
            .with_context(|| format!("create topic {topic} on {}", settings.kafka.brokers))?;
    }
    Ok(())
}
