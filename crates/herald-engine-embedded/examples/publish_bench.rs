//! Acknowledged publishes per second through a `Hub`, embedded engine vs
//! memory engine, with 1, 16 and 256 concurrent publishers.
//!
//! ```sh
//! cargo run --release -p herald-engine-embedded --example publish_bench
//! cargo run --release -p herald-engine-embedded --example publish_bench -- --seconds 5 --delays 0,1,2 --dir /var/tmp
//! ```
//!
//! Each publisher publishes one event at a time (like one HTTP publish) and
//! waits for its acknowledgement; for the embedded engine that means the
//! event was fsynced. Events go to 64 topics. Numbers depend on the disk's
//! fsync latency: run it where the data dir will live (`--dir`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Data, Engine, HistoryLimits, Hub, HubConfig, MemoryEngine, NewEvent, Topic};
use herald_engine_embedded::{EmbeddedConfig, EmbeddedEngine};

struct Args {
    seconds: f64,
    concurrency: Vec<usize>,
    delays_ms: Vec<u64>,
    dir: std::path::PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 3.0,
        concurrency: vec![1, 16, 256],
        delays_ms: vec![0, 1, 2],
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let list = |v: &str| -> Result<Vec<u64>, String> {
            v.split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .map_err(|_| format!("{flag}: {x:?} is not a number"))
                })
                .collect()
        };
        match flag.as_str() {
            "--seconds" => {
                a.seconds = value
                    .parse()
                    .map_err(|_| "--seconds: a number".to_owned())?
            }
            "--concurrency" => {
                a.concurrency = list(&value)?.into_iter().map(|c| c as usize).collect()
            }
            "--delays" => a.delays_ms = list(&value)?,
            "--dir" => a.dir = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

struct Run {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(hub: &Hub, publishers: usize, seconds: f64) -> Run {
    let topics: Arc<Vec<Topic>> = Arc::new(
        (0..64)
            .map(|i| Topic::new(&format!("bench/{i}")).unwrap())
            .collect(),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (hub, topics) = (hub.clone(), topics.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = topics[(p + n as usize) % topics.len()].clone();
                    let data = Data::Json(
                        format!(r#"{{"publisher":{p},"n":{n},"status":"shipped"}}"#).into(),
                    );
                    let t0 = Instant::now();
                    hub.publish(NewEvent::new(t, data)).await.expect("publish");
                    latencies.push(t0.elapsed());
                    n += 1;
                    // The memory engine answers at once: let the others run.
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("publisher task"));
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Run {
        per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("publish_bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let history = HistoryLimits::default();
        let config = HubConfig {
            history,
            ..HubConfig::default()
        };
        println!("| engine | publishers | acknowledged publishes/s | p50 latency | p99 latency |");
        println!("|---|---:|---:|---:|---:|");
        let mut engines: Vec<(String, Option<u64>)> = vec![("memory".into(), None)];
        for d in &args.delays_ms {
            engines.push((format!("embedded, commit delay {d} ms"), Some(*d)));
        }
        for (name, delay) in engines {
            for &c in &args.concurrency {
                let dir = tempfile::Builder::new()
                    .prefix("herald-bench")
                    .tempdir_in(&args.dir)
                    .expect("temp dir");
                let engine: Arc<dyn Engine> = match delay {
                    None => Arc::new(MemoryEngine::new(history)),
                    Some(d) => {
                        let mut cfg = EmbeddedConfig::new(dir.path()).with_history(history);
                        cfg.commit_delay = Duration::from_millis(d);
                        Arc::new(EmbeddedEngine::open(cfg).expect("open the store"))
                    }
                };
                let hub = Hub::new(engine, config.clone());
                let r = run(&hub, c, args.seconds).await;
                hub.engine().close().await;
                println!(
                    "| {name} | {c} | {:.0} | {:.2} ms | {:.2} ms |",
                    r.per_sec, r.p50_ms, r.p99_ms
                );
            }
        }
    });
}
