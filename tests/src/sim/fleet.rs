//! One simulated run of the fleet: generate the batches, apply them once in process as the
//! reference, then let worker processes apply them through the queue under the model, stop and
//! restart workers on the way, and compare the end state with the reference.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleet_shared::finish::Services;
use fleet_shared::model::item::to_wire_json;
use fleet_shared::openai::{OpenAiClient, OpenAiConfig};
use fleet_shared::pinecone::{PineconeClient, PineconeConfig};
use fleet_shared::secret::SecretString;
use fleet_shared::store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::batches::{self, BatchPlan, Piece};
use super::{FaultRates, Model, SimTable};
use crate::common::FaultSpec;
use crate::openai::OpenAiEmulator;
use crate::pinecone::PineconeEmulator;
use crate::scenario::{Outcome, Rng};

/// Pinecone's update limit per namespace, per (virtual) second.
pub const NAMESPACE_UPDATES_PER_SECOND: f64 = 100.0;
/// The fleet's table and namespace; the reference run's.
const TABLE: &str = "receipts";
const REF_TABLE: &str = "reference";
const NAMESPACE: &str = "words";
const REF_NAMESPACE: &str = "reference";

/// What happens to a worker when the fleet has made `at` of the updates it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// SIGTERM (it drains and exits), then a new worker in its place.
    Stop { at: f64 },
    /// SIGKILL (a crash: its lease and message run out), then a new worker in its place.
    Kill { at: f64 },
}

/// A scenario: batches, workers, time compression, events and faults.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub workers: usize,
    pub batches: Vec<BatchPlan>,
    /// Real time runs this many times faster than simulated time.
    pub scale: f64,
    pub events: Vec<Event>,
    pub faults: bool,
    /// Give up after this much real time.
    pub timeout: Duration,
    /// Each worker takes one batch at a time (`MAX_IN_FLIGHT=1`, `MAX_CONCURRENT_APPLIES=1`),
    /// so that `workers` processes apply at once: how the pacing scenario measures the
    /// adaptive pacing of 1, 3 and 10 processes sharing the namespace.
    pub one_batch_per_worker: bool,
}

/// The scenarios `scripts/simulate.sh` knows, by name (`pacing` stands for `pacing-1`,
/// `pacing-3` and `pacing-10`, see [`Scenario::expand`]).
pub const NAMES: &[&str] = &["smoke", "big", "restarts", "mixed", "faults", "pacing"];

/// The numbers of workers the pacing scenario runs at once.
pub const PACING_WORKERS: [usize; 3] = [1, 3, 10];

impl Scenario {
    /// The runs a name stands for: `pacing` is three (1, 3 and 10 workers), any other name
    /// one; empty for an unknown name.
    pub fn expand(name: &str, seed: u64) -> Vec<Scenario> {
        if name == "pacing" {
            PACING_WORKERS
                .iter()
                .filter_map(|n| Scenario::named(&format!("pacing-{n}"), seed))
                .collect()
        } else {
            Scenario::named(name, seed).into_iter().collect()
        }
    }

    pub fn named(name: &str, seed: u64) -> Option<Scenario> {
        let one = |receipts| BatchPlan {
            receipts,
            outcome: Outcome::Completed,
            in_progress_polls: 0,
            targets_per_receipt: 5,
        };
        let big = BatchPlan {
            targets_per_receipt: 7,
            ..one(50_000)
        };
        let mut rng = Rng::new(seed ^ 0x5eed);
        let fraction = |rng: &mut Rng, lo: u64, hi: u64| (lo + rng.below(hi - lo)) as f64 / 100.0;
        let s = match name {
            "smoke" => Scenario {
                name: name.into(),
                seed,
                workers: 2,
                batches: vec![
                    one(150),
                    BatchPlan {
                        in_progress_polls: 1,
                        ..one(120)
                    },
                    BatchPlan {
                        outcome: Outcome::Expired,
                        ..one(100)
                    },
                ],
                scale: 20.0,
                events: vec![Event::Stop { at: 0.4 }],
                faults: false,
                timeout: Duration::from_secs(120),
                one_batch_per_worker: false,
            },
            "big" => Scenario {
                name: name.into(),
                seed,
                workers: 1,
                batches: vec![big.clone()],
                scale: 20.0,
                events: Vec::new(),
                faults: false,
                timeout: Duration::from_secs(600),
                one_batch_per_worker: false,
            },
            "restarts" => {
                let mut at = [
                    fraction(&mut rng, 10, 30),
                    fraction(&mut rng, 35, 60),
                    fraction(&mut rng, 65, 90),
                ];
                at.sort_by(f64::total_cmp);
                Scenario {
                    name: name.into(),
                    seed,
                    workers: 1,
                    batches: vec![big.clone()],
                    scale: 20.0,
                    events: vec![
                        Event::Stop { at: at[0] },
                        Event::Kill { at: at[1] },
                        Event::Stop { at: at[2] },
                    ],
                    faults: false,
                    timeout: Duration::from_secs(600),
                    one_batch_per_worker: false,
                }
            }
            "mixed" => {
                let sizes = [100, 300, 600, 1_000, 1_500, 2_500];
                let batches = (0..20)
                    .map(|i| BatchPlan {
                        receipts: *rng.pick(&sizes),
                        outcome: match i % 10 {
                            7 => Outcome::Failed,
                            8 if i % 20 == 8 => Outcome::Expired,
                            8 => Outcome::Cancelled,
                            _ => Outcome::Completed,
                        },
                        in_progress_polls: (i % 4) as u32,
                        targets_per_receipt: 5,
                    })
                    .collect();
                Scenario {
                    name: name.into(),
                    seed,
                    workers: 3,
                    batches,
                    scale: 25.0,
                    events: Vec::new(),
                    faults: false,
                    timeout: Duration::from_secs(400),
                    one_batch_per_worker: false,
                }
            }
            "faults" => Scenario {
                name: name.into(),
                seed,
                workers: 2,
                batches: vec![one(1_500), one(1_000), one(800)],
                scale: 20.0,
                events: vec![Event::Stop { at: 0.5 }],
                faults: true,
                timeout: Duration::from_secs(300),
                one_batch_per_worker: false,
            },
            // N workers, N batches of equal size (4,000 requests in all, about 12,800 vector
            // updates): each worker takes one, so N processes apply at once from start to end.
            // K = 5, not 20: at K = 20 one worker alone is held by the machine (see the
            // module docs).
            pacing if pacing.starts_with("pacing-") => {
                let workers: usize = pacing["pacing-".len()..].parse().ok()?;
                if !PACING_WORKERS.contains(&workers) {
                    return None;
                }
                Scenario {
                    name: name.into(),
                    seed,
                    workers,
                    batches: vec![one(4_000 / workers as u32); workers],
                    scale: 5.0,
                    events: Vec::new(),
                    faults: false,
                    timeout: Duration::from_secs(300),
                    one_batch_per_worker: true,
                }
            }
            _ => return None,
        };
        Some(s)
    }
}

/// Where the run finds what it does not start itself.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The `worker` binary.
    pub worker_bin: PathBuf,
    /// A directory for logs and the workers' temporary files (emptied first).
    pub work_dir: PathBuf,
}

/// The figures of one run, in simulated (unscaled) units where they are times.
#[derive(Debug, Clone)]
pub struct Measured {
    pub scenario: String,
    pub requests: u64,
    pub virtual_s: f64,
    pub floor_s: f64,
    pub cpu_s: f64,
    pub peak_rss_mb: f64,
    pub disk_peak_mb: f64,
    pub pinecone_429: u64,
    pub pinecone_updates: u64,
    pub end_state_ok: bool,
    pub diff: String,
    pub scale: f64,
    pub workers_started: usize,
    pub dynamodb_calls: u64,
    pub dynamodb_write_units: f64,
    pub dynamodb_throttled: u64,
    pub driver_cpu_s: f64,
    /// The driver's CPU seconds in the reference run (0 when it came from the cache).
    pub reference_cpu_s: f64,
    pub reference_real_s: f64,
    pub fleet_real_s: f64,
    /// Workers' and driver's CPU seconds while the fleet ran, per real second: how close the
    /// run came to the machine's cores (the scale is chosen to keep this well below 2).
    pub fleet_cores: f64,
    /// Updates per simulated second and share of update calls answered 429 between 5 % and
    /// 85 % of the updates (the steady state, without start and tail).
    pub steady_updates_per_s: f64,
    pub steady_429_pct: f64,
}

impl Measured {
    /// The one line every scenario prints.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT scenario={} requests={} virtual_s={:.0} floor_s={:.0} ratio={:.3} cpu_s={:.1} peak_rss_mb={:.0} disk_peak_mb={:.0} pinecone_429={} end_state={}",
            self.scenario,
            self.requests,
            self.virtual_s,
            self.floor_s,
            if self.floor_s > 0.0 {
                self.virtual_s / self.floor_s
            } else {
                0.0
            },
            self.cpu_s,
            self.peak_rss_mb,
            self.disk_peak_mb,
            self.pinecone_429,
            if self.end_state_ok { "ok" } else { "diff" },
        )
    }

    /// What else was measured (one line, for the log and the README).
    pub fn detail_line(&self) -> String {
        let per_k = |x: f64| {
            if self.requests == 0 {
                0.0
            } else {
                x * 1000.0 / self.requests as f64
            }
        };
        let updates_per_s = if self.virtual_s > 0.0 {
            self.pinecone_updates as f64 / self.virtual_s
        } else {
            0.0
        };
        format!(
            "DETAIL scenario={} scale={} workers_started={} pinecone_updates={} namespace_updates_per_s={:.1} pinecone_429_pct={:.2} steady_updates_per_s={:.1} steady_pct_of_limit={:.1} steady_429_pct={:.2} dynamodb_calls_per_1k_requests={:.0} dynamodb_wcu_per_1k_requests={:.0} dynamodb_throttled={} fleet_real_s={:.1} fleet_cores={:.2} reference_real_s={:.1} reference_cpu_s={:.1} driver_cpu_s={:.1}{}",
            self.scenario,
            self.scale,
            self.workers_started,
            self.pinecone_updates,
            updates_per_s,
            if self.pinecone_updates + self.pinecone_429 > 0 {
                100.0 * self.pinecone_429 as f64
                    / (self.pinecone_updates + self.pinecone_429) as f64
            } else {
                0.0
            },
            self.steady_updates_per_s,
            100.0 * self.steady_updates_per_s / NAMESPACE_UPDATES_PER_SECOND,
            self.steady_429_pct,
            per_k(self.dynamodb_calls as f64),
            per_k(self.dynamodb_write_units),
            self.dynamodb_throttled,
            self.fleet_real_s,
            self.fleet_cores,
            self.reference_real_s,
            self.reference_cpu_s,
            self.driver_cpu_s,
            if self.diff.is_empty() {
                String::new()
            } else {
                format!(" diff=\"{}\"", self.diff)
            },
        )
    }
}

/// The services of the run, started once per scenario.
struct World {
    table: SimTable,
    openai: OpenAiEmulator,
    pinecone: PineconeEmulator,
    summaries: Vec<(String, String)>,
    requests: u64,
    /// Seconds every generated time moves by (the same for the reference and the fleet).
    shift: i64,
}

/// The end state of the reference run of some batches, kept for the next scenario of the
/// same batches (`big` and `restarts` share theirs).
#[derive(Debug, Clone)]
pub struct Reference {
    table: Digest,
    vectors: Digest,
    /// Vector updates the reference run made: what the namespace limit is applied to.
    updates: u64,
}

impl Reference {
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(16 * (self.table.len() + self.vectors.len()) + 32);
        for part in [&self.table, &self.vectors] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            for (k, v) in part {
                out.extend_from_slice(&k.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.updates.to_le_bytes());
        std::fs::write(path, out)
    }

    fn read(path: &Path) -> Option<Reference> {
        let bytes = std::fs::read(path).ok()?;
        let mut words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
        let mut part = || -> Option<Digest> {
            let n = words.next()?;
            (0..n)
                .map(|_| Some((words.next()?, words.next()?)))
                .collect()
        };
        let (table, vectors) = (part()?, part()?);
        let updates = words.next()?;
        Some(Reference {
            table,
            vectors,
            updates,
        })
    }
}

/// References by seed and batches, in memory and (when given a directory) on disk, keyed also
/// by this program's own bytes: any change of the code makes a new reference.
#[derive(Debug, Default)]
pub struct References {
    known: HashMap<String, Reference>,
    dir: Option<PathBuf>,
}

impl References {
    pub fn new(dir: Option<PathBuf>) -> Self {
        References {
            known: HashMap::new(),
            dir,
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        static PROGRAM: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let program = *PROGRAM.get_or_init(|| {
            std::env::current_exe()
                .and_then(std::fs::read)
                .map(|b| {
                    let mut h = DefaultHasher::new();
                    b.hash(&mut h);
                    h.finish()
                })
                .unwrap_or(0)
        });
        self.dir.as_ref().map(|d| {
            d.join(format!(
                "{:016x}.ref",
                hash_of(&[key, &program.to_string()])
            ))
        })
    }

    fn get(&mut self, key: &str) -> Option<Reference> {
        if let Some(r) = self.known.get(key) {
            return Some(r.clone());
        }
        let r = Reference::read(&self.path(key)?)?;
        self.known.insert(key.to_owned(), r.clone());
        Some(r)
    }

    fn insert(&mut self, key: String, r: Reference) {
        if let Some(path) = self.path(&key) {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = r.write(&path) {
                eprintln!(
                    "simulate: could not keep the reference in {}: {e}",
                    path.display()
                );
            }
        }
        self.known.insert(key, r);
    }
}

/// Runs one scenario end to end (its reference from `references` when an earlier scenario
/// of the same batches computed it).
pub async fn run(
    scenario: &Scenario,
    setup: &Setup,
    references: &mut References,
) -> anyhow::Result<Measured> {
    let driver_cpu0 = proc_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let _ = std::fs::remove_dir_all(&setup.work_dir);
    std::fs::create_dir_all(&setup.work_dir)?;
    let key = format!("{}:{:?}", scenario.seed, scenario.batches);
    let known = references.get(&key);
    let load_started = Instant::now();
    let first = if known.is_none() {
        (REF_TABLE, REF_NAMESPACE)
    } else {
        (TABLE, NAMESPACE)
    };
    let mut world = build_world(scenario, first).await?;
    let (items, item_bytes) = world.table.table_size(first.0);
    eprintln!(
        "simulate: {}: loaded {items} items ({} MB of JSON), {} vectors in {:.1} s; driver rss {:.0} MB",
        scenario.name,
        item_bytes >> 20,
        world.pinecone.vector_count(first.1),
        load_started.elapsed().as_secs_f64(),
        driver_rss_mb(),
    );

    // 1. The reference: one uninterrupted run of every batch, in process, unthrottled.
    let started = Instant::now();
    let reference_cpu0 = proc_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let reference = match known {
        Some(r) => r,
        None => {
            reference_run(&world).await?;
            let r = Reference {
                table: table_digest(&world.table, REF_TABLE),
                vectors: vector_digest(&world.pinecone, REF_NAMESPACE),
                updates: world.pinecone.update_count() as u64,
            };
            world.table.drop_table(REF_TABLE);
            world.pinecone.drop_namespace(REF_NAMESPACE);
            world.pinecone.clear_updates();
            world.pinecone.clear_requests();
            references.insert(key, r.clone());
            load(&mut world, scenario, (TABLE, NAMESPACE), false).await?;
            r
        }
    };
    let reference_real_s = started.elapsed().as_secs_f64();
    let reference_cpu_s = proc_cpu_seconds(std::process::id()).unwrap_or(0.0) - reference_cpu0;
    eprintln!(
        "simulate: {}: reference in {reference_real_s:.1} s; driver rss {:.0} MB",
        scenario.name,
        driver_rss_mb()
    );
    let (ref_table, ref_vectors, needed) =
        (&reference.table, &reference.vectors, reference.updates);
    let floor_s = needed as f64 / NAMESPACE_UPDATES_PER_SECOND;

    // 2. The fleet, under the model.
    let k = scenario.scale;
    world.table.set_model(Model::dynamodb(k));
    world.table.reset_stats();
    // Buckets of one simulated second's worth (a real second's would be K simulated ones,
    // letting the namespace run K times its limit after a pause).
    world.pinecone.set_rate_limit_with_burst(
        (NAMESPACE_UPDATES_PER_SECOND * k).round() as u32,
        NAMESPACE_UPDATES_PER_SECOND as u32,
    );
    world
        .pinecone
        .set_fetch_rate_limit_with_burst((100.0 * k).round() as u32, 100);
    world
        .pinecone
        .set_rate_limit_retry_after(Some(Duration::from_secs(1).div_f64(k)));
    world
        .pinecone
        .set_latency(Duration::from_millis(10).div_f64(k));
    world
        .openai
        .set_latency(Duration::from_millis(100).div_f64(k));
    let mut rng = Rng::new(scenario.seed ^ 0xfa17);
    if scenario.faults {
        world.table.set_fault_rates(FaultRates {
            throughput: 0.01,
            server_error: 0.005,
            unprocessed: 0.02,
        });
        world.openai.fail_next(FaultSpec::status(500).times(2));
    }
    let sim_server = super::serve(world.table.clone(), ([127, 0, 0, 1], 0).into()).await?;
    let (_, aws) = crate::aws_env::local_clients()?;
    let queues = crate::aws_env::create_queues(&aws.sqs, &crate::aws_env::unique("sim"), 1000, 30)
        .await
        .context("creating the queues on moto (scripts/moto.sh start)")?;
    let sqs_endpoint = crate::aws_env::local_endpoint()?;
    for (batch_id, _) in &world.summaries {
        aws.sqs
            .send_message()
            .queue_url(&queues.work_url)
            .message_body(serde_json::json!({"v": 1, "batch_id": batch_id}).to_string())
            .send()
            .await?;
    }
    let env = WorkerEnv {
        bin: setup.worker_bin.clone(),
        dir: setup.work_dir.clone(),
        vars: vec![
            ("AWS_REGION", crate::aws_env::REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_ENDPOINT_URL_DYNAMODB", sim_server.url()),
            ("AWS_ENDPOINT_URL_SQS", sqs_endpoint),
            ("DYNAMODB_TABLE_NAME", TABLE.into()),
            ("QUEUE_URL", queues.work_url.clone()),
            ("DEAD_LETTER_QUEUE_URL", queues.dead_letter_url.clone()),
            ("OPENAI_BASE_URL", world.openai.base_url()),
            ("OPENAI_API_KEY", "sk-sim".into()),
            ("PINECONE_INDEX_HOST", world.pinecone.base_url()),
            ("PINECONE_API_KEY", "pc-sim".into()),
            ("PINECONE_NAMESPACE", NAMESPACE.into()),
            (
                // Every worker's ceiling is the namespace's whole limit: the adaptive bucket
                // finds each one's share (a fixed share would cap the rate by itself).
                "PINECONE_UPDATES_PER_SECOND",
                format!(
                    "{:.0}",
                    (NAMESPACE_UPDATES_PER_SECOND * k).clamp(1.0, 10_000.0)
                ),
            ),
            // Fetches too (the emulator does not limit them): 50 per simulated second.
            (
                "PINECONE_FETCHES_PER_SECOND",
                format!("{:.0}", (50.0 * k).clamp(1.0, 10_000.0)),
            ),
            ("METRICS_ADDR", "127.0.0.1:0".into()),
            (
                "MAX_IN_FLIGHT",
                if scenario.one_batch_per_worker {
                    "1"
                } else {
                    "4"
                }
                .into(),
            ),
            (
                "MAX_CONCURRENT_APPLIES",
                if scenario.one_batch_per_worker {
                    "1"
                } else {
                    "2"
                }
                .into(),
            ),
            // 2 s (40 s at K = 20, the lowest the worker takes): what a crash costs, the
            // message and the lease running out, is not inflated by the scale; the heartbeat
            // every second.
            ("VISIBILITY_TIMEOUT_SECONDS", "2".into()),
            ("HEARTBEAT_SECONDS", "1".into()),
            // The adaptive pacing's clock runs as fast as the services do.
            ("SIMULATION_TIME_SCALE", format!("{k}")),
            ("RECHECK_MIN_SECONDS", "1".into()),
            ("RECHECK_MAX_SECONDS", "2".into()),
            ("RETRY_MIN_SECONDS", "1".into()),
            ("RETRY_MAX_SECONDS", "3".into()),
            ("MESSAGE_DEADLINE_SECONDS", "120".into()),
            ("SHUTDOWN_GRACE_SECONDS", "1".into()),
            ("LOG_FORMAT", "json".into()),
            // SIM_WORKER_LOG (e.g. `info`) to see what the workers did.
            (
                "RUST_LOG",
                std::env::var("SIM_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ],
    };
    let started = Instant::now();
    let fleet_cpu0 = proc_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let answered_429_before = world.pinecone.answered_429();
    // (real time, updates, 429s) when the updates first reached 5 % and 85 % of the needed.
    let mut window: [Option<(Instant, u64, u64)>; 2] = [None, None];
    let mut fleet = Fleet::default();
    for _ in 0..scenario.workers {
        fleet.spawn(&env)?;
    }
    let mut events = scenario.events.clone();
    let mut injected_at = 0u64;
    // SIM_TIMELINE=FILE: the updates made by each tenth of a real second, to see stalls.
    let mut timeline = std::env::var_os("SIM_TIMELINE")
        .map(std::fs::File::create)
        .transpose()?
        .map(std::io::BufWriter::new);
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fleet.sample();
        // The 429s are counted apart; the log would only grow.
        world.pinecone.clear_requests();
        let done = world.summaries.iter().all(|(id, _)| {
            world
                .table
                .attribute(TABLE, &format!("BATCH#{id}"), "STATUS", "status")
                .and_then(|v| v["S"].as_str().map(str::to_owned))
                .is_some_and(|s| s != "PENDING")
        });
        if done {
            break Ok(());
        }
        if started.elapsed() > scenario.timeout {
            break Err(format!(
                "not finished after {:.0} s of real time",
                started.elapsed().as_secs_f64()
            ));
        }
        if let Some(out) = timeline.as_mut() {
            use std::io::Write as _;
            writeln!(
                out,
                "{:.1} {}",
                started.elapsed().as_secs_f64(),
                world.pinecone.update_count()
            )?;
        }
        let progress = if needed == 0 {
            1.0
        } else {
            world.pinecone.update_count() as f64 / needed as f64
        };
        for (slot, at) in window.iter_mut().zip([0.05, 0.85]) {
            if slot.is_none() && progress >= at {
                *slot = Some((
                    Instant::now(),
                    world.pinecone.update_count() as u64,
                    world.pinecone.answered_429() - answered_429_before,
                ));
            }
        }
        if let Some(pos) = events.iter().position(|e| match e {
            Event::Stop { at } | Event::Kill { at } => progress >= *at,
        }) {
            let event = events.remove(pos);
            if let Some(out) = timeline.as_mut() {
                use std::io::Write as _;
                writeln!(out, "# {:.1} {event:?}", started.elapsed().as_secs_f64())?;
            }
            fleet.event(event, &env, &mut rng)?;
        }
        // One fault of each kind waits at a time (a queued fault waits for a matching call:
        // fetches are rare, so piling them up would fail every one), one more per 1,000
        // updates made: paced by progress, not by real time, so the figures do not depend on
        // how fast the machine runs the scenario.
        let made = world.pinecone.update_count() as u64;
        if scenario.faults
            && made >= injected_at + 1_000
            && world.pinecone.pending_faults().is_empty()
        {
            injected_at = made;
            world
                .pinecone
                .fail_next(FaultSpec::status(503).on_path("/vectors/update"));
            world
                .pinecone
                .fail_next(FaultSpec::rate_limited(None).on_path("/vectors/update"));
            if rng.chance(30) {
                world
                    .pinecone
                    .fail_next(FaultSpec::status(500).on_path("/vectors/fetch"));
            }
        }
    };
    let fleet_real_s = started.elapsed().as_secs_f64();
    let fleet_driver_cpu_s = proc_cpu_seconds(std::process::id()).unwrap_or(0.0) - fleet_cpu0;
    fleet.sample();
    let fleet_cores = (fleet.cpu_s() + fleet_driver_cpu_s) / fleet_real_s.max(1e-9);
    let (steady_updates_per_s, steady_429_pct) = match window {
        [Some((t0, u0, r0)), Some((t1, u1, r1))] if t1 > t0 => {
            let updates = (u1 - u0) as f64;
            let rejected = (r1 - r0) as f64;
            (
                updates / (t1.duration_since(t0).as_secs_f64() * k),
                100.0 * rejected / (updates + rejected).max(1.0),
            )
        }
        _ => (0.0, 0.0),
    };
    fleet.stop_all().await;
    let stats = world.table.stats();
    let pinecone_429 = world.pinecone.answered_429() - answered_429_before;
    let pinecone_updates = world.pinecone.update_count() as u64;
    let mut diff = Vec::new();
    if let Err(e) = &outcome {
        diff.push(e.clone());
    }
    let table_diff = compare(ref_table, &table_digest(&world.table, TABLE));
    if !table_diff.is_empty() {
        diff.push(format!("table: {table_diff}"));
    }
    let vector_diff = compare(ref_vectors, &vector_digest(&world.pinecone, NAMESPACE));
    if !vector_diff.is_empty() {
        diff.push(format!("vectors: {vector_diff}"));
    }
    sim_server.shutdown().await;
    // The driver's own threads only: /proc/PID/stat's utime and stime do not include the
    // workers (children), whose CPU is `cpu_s`.
    let driver_cpu_s = proc_cpu_seconds(std::process::id()).unwrap_or(0.0) - driver_cpu0;
    let total = stats.total();
    let per_k = 1000.0 / (world.requests.max(1) as f64);
    eprintln!(
        "simulate: {}: DynamoDB per 1,000 requests: {}",
        scenario.name,
        stats
            .by_op
            .iter()
            .filter(|(_, o)| o.calls > 0)
            .map(|(op, o)| format!(
                "{op} {:.0} calls {:.0} WCU",
                o.calls as f64 * per_k,
                o.write_units * per_k
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Measured {
        scenario: scenario.name.clone(),
        requests: world.requests,
        virtual_s: fleet_real_s * k,
        floor_s,
        cpu_s: fleet.cpu_s(),
        peak_rss_mb: fleet.peak_rss_kb as f64 / 1024.0,
        disk_peak_mb: fleet.disk_peak as f64 / (1024.0 * 1024.0),
        pinecone_429,
        pinecone_updates,
        end_state_ok: diff.is_empty(),
        diff: diff.join("; "),
        scale: k,
        workers_started: fleet.started,
        dynamodb_calls: stats.data_calls(),
        dynamodb_write_units: total.write_units,
        dynamodb_throttled: total.throttled,
        driver_cpu_s,
        reference_cpu_s,
        reference_real_s,
        fleet_real_s,
        fleet_cores,
        steady_updates_per_s,
        steady_429_pct,
    })
}

/// Starts the services and loads the batches into `table` and `namespace` (the reference's
/// or the fleet's).
async fn build_world(
    scenario: &Scenario,
    (table_name, namespace): (&str, &str),
) -> anyhow::Result<World> {
    let table = SimTable::new(scenario.seed);
    table.keep_only_indexes(&["GSI1"]);
    let openai = OpenAiEmulator::start().await?;
    let pinecone = PineconeEmulator::start().await?;
    pinecone.set_fetch_rate_limit(None);
    pinecone.set_record_updates(false);
    // Every time moves to "now", so that no batch looks overdue and gets cancelled; one shift
    // for the whole run, so the reference and the fleet see the same times.
    let now = chrono::Utc::now().timestamp();
    let shift = (now - crate::scenario::CREATED_AT - 3_600) / 3_600 * 3_600;
    let mut world = World {
        table,
        openai,
        pinecone,
        summaries: Vec::new(),
        requests: 0,
        shift,
    };
    load(&mut world, scenario, (table_name, namespace), true).await?;
    Ok(world)
}

/// Generates the batches (the same ones every time: seeded) into `table` and `namespace`, and
/// the first time (`first`) their files and OpenAI batches. The reference and the fleet load
/// one after the other, so that the driver never holds two copies of a big batch's data.
async fn load(
    world: &mut World,
    scenario: &Scenario,
    (table_name, namespace): (&str, &str),
    first: bool,
) -> anyhow::Result<()> {
    let table = &world.table;
    let pinecone = &world.pinecone;
    let clients = super::clients(table);
    crate::aws_env::create_receipts_table(&clients.dynamodb, table_name).await?;
    let mut rng = Rng::new(scenario.seed);
    for (index, plan) in scenario.batches.iter().enumerate() {
        let mut failed: Option<String> = None;
        let generated = batches::generate(&mut rng, index, plan, world.shift, |piece| {
            let result = match piece {
                Piece::Label(l) => {
                    let item = to_wire_json(&l.to_item());
                    let item = item.as_object().cloned().unwrap_or_default();
                    table.put(table_name, item)
                }
                Piece::Vector(id, meta) => {
                    pinecone.upsert(namespace, id, vec![0.0], meta.clone());
                    Ok(())
                }
            };
            if let Err(e) = result {
                failed.get_or_insert(e);
            }
        });
        if let Some(e) = failed {
            bail!("loading batch {index}: {e}");
        }
        let item = to_wire_json(&generated.summary.to_item());
        let item = item.as_object().cloned().unwrap_or_default();
        table.put(table_name, item).map_err(anyhow::Error::msg)?;
        if !first {
            continue;
        }
        for (id, content) in generated.files {
            world.openai.add_file(id, content);
        }
        let mut reference = generated.spec.clone();
        reference.id = format!("ref-{}", generated.spec.id);
        reference.steps = vec![(generated.final_status.clone(), 1)];
        world.openai.add_batch(reference.clone());
        world.openai.add_batch(generated.spec.clone());
        world
            .summaries
            .push((generated.summary.batch_id.clone(), reference.id));
        world.requests += generated.requests;
    }
    Ok(())
}

/// Applies every batch once, in process, with no limits: the state any other run must end in.
async fn reference_run(world: &World) -> anyhow::Result<()> {
    let table = world.table.clone();
    let openai_url = world.openai.base_url();
    let pinecone_url = world.pinecone.base_url();
    let batches = world.summaries.clone();
    let handle = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let clients = super::clients(&table);
            let store = Store::new(clients.dynamodb, REF_TABLE);
            let openai = OpenAiClient::new(OpenAiConfig {
                base_url: openai_url,
                ..OpenAiConfig::new(SecretString::from("sk-sim"))
            })?;
            // Unthrottled, and more calls in flight than a worker makes: the reference is
            // CPU-bound (its client here, SimTable and the emulators on the driver's other
            // threads), and concurrency changes no outcome (the apply's writes are
            // idempotent or conditional; see `fleet_shared::finish`).
            let pinecone = PineconeClient::new(PineconeConfig {
                namespace: REF_NAMESPACE.into(),
                updates_per_second: 1e6,
                fetches_per_second: 1e6,
                update_concurrency: 32,
                fetch_concurrency: 8,
                ..PineconeConfig::new(pinecone_url, SecretString::from("pc-sim"))
            })?;
            let mut services = Services::new(store, openai, pinecone);
            services.options.label_concurrency = 64;
            services.options.read_concurrency = 32;
            for (batch_id, openai_id) in &batches {
                let summary = services.load_summary(batch_id).await?;
                let batch = services.openai.get_batch(openai_id).await?;
                // The apply records its progress only under the batch's lease.
                let now_ms = chrono::Utc::now().timestamp_millis();
                services
                    .store
                    .acquire_lease(batch_id, "sim-reference", 86_400_000, now_ms)
                    .await?;
                services
                    .apply(&summary, &batch, &CancellationToken::new(), "sim-reference")
                    .await
                    .with_context(|| format!("reference apply of {batch_id}"))?;
            }
            Ok(())
        })
    });
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the reference run panicked"))?
}

type Digest = HashMap<u64, u64>;

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Every item but the fleet's own bookkeeping (leases, chains), by key.
fn table_digest(table: &SimTable, name: &str) -> Digest {
    let mut d = Digest::new();
    table.for_each_item(name, |pk, sk, text| {
        if sk != "FLEET#STATE" {
            d.insert(hash_of(&[pk, sk]), hash_of(&[text]));
        }
    });
    d
}

fn vector_digest(pinecone: &PineconeEmulator, namespace: &str) -> Digest {
    pinecone
        .all(namespace)
        .iter()
        .map(|(id, meta)| {
            let text = Value::Object(meta.clone()).to_string();
            (hash_of(&[id]), hash_of(&[&text]))
        })
        .collect()
}

/// "" when equal, else what differs.
fn compare(reference: &Digest, got: &Digest) -> String {
    let missing = reference.keys().filter(|k| !got.contains_key(k)).count();
    let extra = got.keys().filter(|k| !reference.contains_key(k)).count();
    let changed = reference
        .iter()
        .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
        .count();
    if missing + extra + changed == 0 {
        String::new()
    } else {
        format!(
            "{missing} missing, {extra} extra, {changed} different of {}",
            reference.len()
        )
    }
}

struct WorkerEnv {
    bin: PathBuf,
    dir: PathBuf,
    vars: Vec<(&'static str, String)>,
}

struct Worker {
    child: Child,
    cpu_s: f64,
    tmp: PathBuf,
    /// Sent SIGTERM: draining, no longer one of the fleet's replicas.
    stopping: bool,
}

/// The worker processes, live and past, and what was measured of them.
#[derive(Default)]
struct Fleet {
    live: Vec<Worker>,
    past_cpu_s: f64,
    peak_rss_kb: u64,
    disk_peak: u64,
    started: usize,
}

impl Fleet {
    fn spawn(&mut self, env: &WorkerEnv) -> anyhow::Result<()> {
        let n = self.started;
        self.started += 1;
        let tmp = env.dir.join(format!("worker-{n}-tmp"));
        std::fs::create_dir_all(&tmp)?;
        let log = std::fs::File::create(env.dir.join(format!("worker-{n}.log")))?;
        let mut cmd = Command::new(&env.bin);
        cmd.env_clear()
            .envs(env.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env("TMPDIR", &tmp)
            .env("HOSTNAME", format!("sim-worker-{n}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", env.bin.display()))?;
        self.live.push(Worker {
            child,
            cpu_s: 0.0,
            tmp,
            stopping: false,
        });
        Ok(())
    }

    /// Reads CPU, peak RSS and disk of every live worker; moves exited ones to the past.
    fn sample(&mut self) {
        let mut disk = 0;
        for w in &mut self.live {
            let pid = w.child.id();
            if let Some(cpu) = proc_cpu_seconds(pid) {
                w.cpu_s = w.cpu_s.max(cpu);
            }
            if let Some(kb) = proc_hwm_kb(pid) {
                self.peak_rss_kb = self.peak_rss_kb.max(kb);
            }
            disk += dir_bytes(&w.tmp);
        }
        self.disk_peak = self.disk_peak.max(disk);
        let mut i = 0;
        while i < self.live.len() {
            if matches!(self.live[i].child.try_wait(), Ok(Some(_))) {
                let w = self.live.remove(i);
                self.past_cpu_s += w.cpu_s;
            } else {
                i += 1;
            }
        }
    }

    fn cpu_s(&self) -> f64 {
        self.past_cpu_s + self.live.iter().map(|w| w.cpu_s).sum::<f64>()
    }

    /// Stops (SIGTERM) or kills (SIGKILL) one replica and starts its replacement at once, as
    /// a ReplicaSet does: the new pod starts while the old one drains.
    fn event(&mut self, event: Event, env: &WorkerEnv, rng: &mut Rng) -> anyhow::Result<()> {
        let replicas: Vec<usize> = (0..self.live.len())
            .filter(|&i| !self.live[i].stopping)
            .collect();
        if replicas.is_empty() {
            return self.spawn(env);
        }
        let i = replicas[rng.below(replicas.len() as u64) as usize];
        let pid = self.live[i].child.id();
        let signal = match event {
            Event::Stop { .. } => "-TERM",
            Event::Kill { .. } => "-KILL",
        };
        eprintln!("simulate: {event:?}: kill {signal} {pid}");
        Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        self.live[i].stopping = true;
        self.spawn(env)
    }

    async fn stop_all(&mut self) {
        for w in &self.live {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(w.child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.live.is_empty() && Instant::now() < deadline {
            self.sample();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for mut w in std::mem::take(&mut self.live) {
            let _ = w.child.kill();
            let _ = w.child.wait();
            self.past_cpu_s += w.cpu_s;
        }
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of a process, from `/proc/PID/stat`.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Peak resident set (`VmHWM`) of a process in KiB.
fn proc_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The driver's resident set now, in MiB.
fn driver_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The driver's own peak RSS in MiB (emulators, SimTable, reference run).
pub fn driver_peak_rss_mb() -> f64 {
    proc_hwm_kb(std::process::id()).unwrap_or(0) as f64 / 1024.0
}
