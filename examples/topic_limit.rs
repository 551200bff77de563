//! Creates single-partition stream topics (with Sluice's default per-topic configuration) in
//! batches until the broker refuses or stops answering, and reports how many it held.
//!
//! `cargo run --example topic_limit -- <brokers> <max>`; point it at a scratch broker, not one
//! other work depends on: `SLUICE_KAFKA_BROKERS=127.0.0.1:19092 scripts/kafka.sh start`.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let brokers = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:19092".into());
    let max: usize = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(40_000);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "30000")
        .create()?;
    let config = sluice::settings::KafkaSettings::default().stream_topic_config;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let started = Instant::now();
    let mut created = 0;
    while created < max {
        let names: Vec<String> = (created..created + 100)
            .map(|i| format!("limit.stream.{i}"))
            .collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| {
                config.iter().fold(
                    NewTopic::new(n, 1, TopicReplication::Fixed(1)),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let res = tokio::time::timeout(
            Duration::from_secs(120),
            admin.create_topics(&topics, &opts),
        )
        .await;
        let failed: Vec<String> = match res {
            Err(_) => vec!["admin request timed out".into()],
            Ok(Err(e)) => vec![e.to_string()],
            Ok(Ok(r)) => r
                .into_iter()
                .filter_map(|x| x.err().map(|(t, c)| format!("{t}: {c}")))
                .collect(),
        };
        if !failed.is_empty() {
            println!(
                "stopped after {created} topics ({:.0}s): {}",
                started.elapsed().as_secs_f64(),
                failed[0]
            );
            return Ok(());
        }
        // Every topic must also take a write, which is what opens its files.
        for n in &names {
            if let Err((e, _)) = producer
                .send(
                    FutureRecord::<(), _>::to(n).payload("x"),
                    Duration::from_secs(30),
                )
                .await
            {
                println!("write to {n} failed after {created} topics: {e}");
                return Ok(());
            }
        }
        created += 100;
        if created % 1000 == 0 {
            println!(
                "{created} topics with one write each ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!("reached {max} topics without a refusal");
    Ok(())
}
