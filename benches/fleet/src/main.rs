//! `meshgate-fleet`: one control plane, N simulated Envoys, measured (issue 20).
//!
//! `meshgate-fleet run --nodes 1000 --api delta` starts a real `meshgate serve` on a
//! generated registry, connects N simulated Envoys ([`envoy`]: real ADS gRPC clients, each
//! its own connection and node id), and measures:
//! - the initial connection of all N at once;
//! - a policy edit, adding a server, removing a server: time from the registry file being
//!   replaced until each node has ACKed everything the edit changed (p50/p99/max), and from
//!   meshgate's first push until then; bytes per node; meshgate CPU per edit;
//! - meshgate's RSS per connected node;
//! - a reconnect storm: meshgate killed (SIGKILL), the registry edited while it is down, a
//!   new meshgate on the same port; time until every node holds the new version.
//!
//! Every phase checks its outcome, not only its timing: all nodes end with identical
//! configuration (content digest), on one version, with no NACK. `churn` drives
//! connect/disconnect cycles and compares meshgate's RSS (the memory bound); `rls` loads the
//! rate-limit service; `run --envoys 2` adds real Envoys, timed through meshgate's `/status`.
//!
//! The simulator shares the machine's CPUs with meshgate: its own decoding of N copies of
//! every push is counted in the wall-clock times (see BENCHMARKS.md).

mod envoy;
mod meshgate;
mod real;
mod registry;
mod rls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tokio::sync::watch;

use envoy::{Api, Shared};
use meshgate::{Launch, Meshgate};
use registry::FleetRegistry;

#[derive(Parser)]
#[command(name = "meshgate-fleet", about = "Simulated Envoy fleet against a real meshgate serve")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ApiChoice {
    Sotw,
    Delta,
    /// Half the nodes each.
    Mixed,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The meshgate binary to measure.
    #[arg(long, default_value = "target/release/meshgate")]
    meshgate: PathBuf,
    /// Servers in the generated registry.
    #[arg(long, default_value_t = 50)]
    servers: usize,
    /// Extra `meshgate serve` arguments (repeatable), e.g. --serve-arg=--wasm=/path.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Connect N nodes, measure three edits and a reconnect storm.
    Run {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, value_enum, default_value_t = ApiChoice::Delta)]
        api: ApiChoice,
        /// Skip the reconnect storm.
        #[arg(long)]
        no_storm: bool,
        /// Real Envoys to run alongside the simulated ones (same ADS variant; `mixed`
        /// alternates), timed through meshgate's /status.
        #[arg(long, default_value_t = 0)]
        envoys: usize,
        /// The Envoy binary for --envoys.
        #[arg(long, default_value = ".venv/bin/envoy")]
        envoy: PathBuf,
        /// Where the real Envoys find libmeshgate.so (the registry's filter runs native).
        #[arg(long, default_value = "target/release")]
        module_dir: PathBuf,
        /// Write every measurement as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Connect/disconnect cycles (a new node id each), comparing meshgate's RSS after the
    /// first `warmup` cycles with its RSS at the end. Exits 1 if it grew beyond the tolerance.
    Churn {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        cycles: usize,
        /// Cycles in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 1_000)]
        warmup: usize,
        /// RSS growth allowed between the end of the warm-up and the end, in KiB.
        #[arg(long, default_value_t = 4096)]
        tolerance_kib: u64,
        #[arg(long, value_enum, default_value_t = ApiChoice::Mixed)]
        api: ApiChoice,
    },
    /// Load on the rate-limit service (meshgate + a redis-server it starts): simulated
    /// Envoys, one decision in flight each, at each concurrency.
    Rls {
        /// The meshgate binary to measure.
        #[arg(long, default_value = "target/release/meshgate")]
        meshgate: PathBuf,
        /// Concurrent clients (comma-separated levels).
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        clients: Vec<usize>,
        /// Seconds per level.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn api_of(choice: ApiChoice, i: usize) -> Api {
    match choice {
        ApiChoice::Sotw => Api::Sotw,
        ApiChoice::Delta => Api::Delta,
        ApiChoice::Mixed if i.is_multiple_of(2) => Api::Sotw,
        ApiChoice::Mixed => Api::Delta,
    }
}

fn main() {
    let cli = Cli::parse();
    // Two workers: the machine's cores, shared with meshgate.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshgate-fleet: cannot start a runtime: {e}");
            std::process::exit(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { common, nodes, api, no_storm, json, envoys, envoy, module_dir } => {
                let real = RealOptions { count: envoys, envoy, module_dir };
                run(common, nodes, api, !no_storm, json, real).await
            }
            Command::Churn { common, cycles, concurrency, warmup, tolerance_kib, api } => {
                churn(common, cycles, concurrency, warmup, tolerance_kib, api).await
            }
            Command::Rls { meshgate, clients, seconds, json } => rls_load(meshgate, clients, seconds, json).await,
        }
    });
    if let Err(e) = result {
        eprintln!("meshgate-fleet: {e}");
        std::process::exit(1);
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    registry_file: PathBuf,
    launch: Launch,
}

fn setup(common: &Common) -> Result<(Setup, FleetRegistry), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let registry_file = dir.path().join("registry.yaml");
    let registry = FleetRegistry::new(common.servers);
    registry.write(&registry_file).map_err(|e| e.to_string())?;
    let launch = Launch {
        binary: common.meshgate.clone(),
        registry: registry_file.clone(),
        workdir: dir.path().to_path_buf(),
        args: common.serve_args.clone(),
    };
    Ok((Setup { _dir: dir, registry_file, launch }, registry))
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Per-node arrival counts: the harness looks only at what came after a mark.
fn marks(nodes: &[Arc<Shared>]) -> Vec<(usize, u32)> {
    nodes
        .iter()
        .map(|n| {
            let r = n.lock();
            (r.arrivals.len(), r.connects)
        })
        .collect()
}

/// Waits until every node has received something since `marks` (and, with `reconnect`,
/// reconnected), and nothing has arrived anywhere for `quiet`. False on timeout.
async fn wait_quiet(nodes: &[Arc<Shared>], marks: &[(usize, u32)], reconnect: bool, timeout: Duration) -> bool {
    let quiet = Duration::from_millis(1500);
    let start = Instant::now();
    let mut last_total = usize::MAX;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut all = true;
        let mut total = 0;
        for (node, (mark, connects)) in nodes.iter().zip(marks) {
            let r = node.lock();
            let fresh = r.arrivals.len() - mark;
            total += fresh;
            if fresh == 0 || (reconnect && r.connects <= *connects) {
                all = false;
            }
        }
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
        }
        if all && last_change.elapsed() >= quiet {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
    }
}

/// What one phase did to the fleet, measured from `t0`, checked for sameness.
fn measure(name: &str, nodes: &[Arc<Shared>], marks: &[(usize, u32)], t0: Instant, complete: bool) -> Value {
    let mut done = Vec::new();
    let mut first_push: Option<Instant> = None;
    let mut bytes = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    let mut versions = std::collections::BTreeSet::new();
    let mut digests = std::collections::BTreeMap::<u64, usize>::new();
    let mut nacks = 0usize;
    let mut responses = 0usize;
    let mut silent = 0usize;
    for (node, (mark, _)) in nodes.iter().zip(marks) {
        let r = node.lock();
        let fresh = &r.arrivals[*mark..];
        if fresh.is_empty() {
            silent += 1;
            continue;
        }
        responses += fresh.len();
        let last = fresh.iter().map(|a| a.answered).max().unwrap_or(t0);
        done.push(last);
        for a in fresh {
            first_push = Some(first_push.map_or(a.received, |f| f.min(a.received)));
            versions.insert(a.version.trim_end_matches("-transition").to_string());
            nacks += usize::from(a.nack.is_some());
        }
        let entry = bytes.entry(node.api.name()).or_default();
        entry.0 += fresh.iter().map(|a| a.bytes).sum::<usize>();
        entry.1 += 1;
        *digests.entry(r.digest).or_default() += 1;
    }
    let mut from_edit: Vec<f64> = done.iter().map(|d| ms(d.saturating_duration_since(t0))).collect();
    from_edit.sort_by(f64::total_cmp);
    let push = first_push.unwrap_or(t0);
    let mut from_push: Vec<f64> = done.iter().map(|d| ms(d.saturating_duration_since(push))).collect();
    from_push.sort_by(f64::total_cmp);
    let bytes_per_node: Value = bytes
        .iter()
        .map(|(api, (total, count))| (api.to_string(), json!(*total / (*count).max(1))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let same = digests.len() == 1 && versions.len() == 1 && silent == 0 && nacks == 0 && complete;
    let summary = json!({
        "phase": name,
        "nodes": nodes.len(),
        "complete": complete,
        "nodes_without_update": silent,
        "identical_config": digests.len() == 1,
        "config_groups": digests.len(),
        "versions": versions.iter().collect::<Vec<_>>(),
        "nacks": nacks,
        "responses": responses,
        "first_push_ms": ms(push.saturating_duration_since(t0)),
        "all_acked_ms": { "p50": percentile(&from_edit, 0.5), "p99": percentile(&from_edit, 0.99), "max": percentile(&from_edit, 1.0) },
        "from_first_push_ms": { "p50": percentile(&from_push, 0.5), "p99": percentile(&from_push, 0.99), "max": percentile(&from_push, 1.0) },
        "bytes_per_node": bytes_per_node,
        "ok": same,
    });
    eprintln!(
        "{name:>14}: all ACKed p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (first push at {:.0} ms; push→ACK p99 {:.0} ms); bytes/node {}; {} response(s), {} NACK(s), config groups {}, versions {:?}{}",
        percentile(&from_edit, 0.5),
        percentile(&from_edit, 0.99),
        percentile(&from_edit, 1.0),
        ms(push.saturating_duration_since(t0)),
        percentile(&from_push, 0.99),
        summary["bytes_per_node"],
        responses,
        nacks,
        digests.len(),
        versions,
        if same { "" } else { "  <-- NOT CONVERGED CLEANLY" }
    );
    summary
}

/// One registry edit the run measures.
type Edit = fn(&mut FleetRegistry);

/// Real Envoys alongside the fleet.
struct RealOptions {
    count: usize,
    envoy: PathBuf,
    module_dir: PathBuf,
}

/// What the phase sent a simulated node of `api` (the first one), by the last accepted
/// version per type since its mark: short type name → version. A real Envoy of the same
/// variant has converged when it has ACKed the same.
fn reference(nodes: &[Arc<Shared>], marks: &[(usize, u32)], api: Api) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Some((node, (mark, _))) = nodes.iter().zip(marks).find(|(n, _)| n.api == api) {
        for arrival in node.lock().arrivals.iter().skip(*mark).filter(|a| a.nack.is_none()) {
            out.insert(real::short(arrival.type_url).to_string(), arrival.version.clone());
        }
    }
    out
}

/// Times the real Envoys of one phase from `samples` (polling on for up to 10 s more for
/// those not there yet); adds them to `phase`.
async fn time_real(
    phase: &mut Value,
    samples: Vec<(Instant, real::Acks)>,
    envoys: &[real::RealEnvoy],
    nodes: &[Arc<Shared>],
    marks: &[(usize, u32)],
    admin: SocketAddr,
    t0: Instant,
) {
    if envoys.is_empty() {
        return;
    }
    let ids: Vec<String> = envoys.iter().map(|e| e.id.clone()).collect();
    let mut samples = samples;
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = |samples: &[(Instant, real::Acks)]| {
        envoys.iter().all(|e| real::converged_at(samples, &e.id, &reference(nodes, marks, e.api)).is_some())
    };
    while !done(&samples) && Instant::now() < deadline {
        tokio::time::sleep(real::POLL).await;
        if let Ok((acks, _)) = real::acks(admin, &ids).await {
            samples.push((Instant::now(), acks));
        }
    }
    let mut times = serde_json::Map::new();
    for e in envoys {
        let at = real::converged_at(&samples, &e.id, &reference(nodes, marks, e.api));
        times.insert(e.id.clone(), json!(at.map(|at| ms(at.saturating_duration_since(t0)))));
    }
    eprintln!("{:>14}  real Envoys all ACKed (ms, {} ms resolution): {:?}", "", real::POLL.as_millis(), times);
    if times.values().any(Value::is_null) {
        phase["ok"] = json!(false);
    }
    phase["real_envoys_ms"] = Value::Object(times);
}

async fn run(
    common: Common,
    count: usize,
    api: ApiChoice,
    storm: bool,
    json_out: Option<PathBuf>,
    real_options: RealOptions,
) -> Result<(), String> {
    let (setup, mut registry) = setup(&common)?;
    let mut meshgate = Meshgate::start(&setup.launch, "127.0.0.1:0".parse().map_err(|_| "address")?)?;
    let xds: SocketAddr = meshgate.xds;
    let endpoint = format!("http://{xds}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = meshgate.rss_kib();
    let cpu_idle = meshgate.cpu_seconds();
    eprintln!("meshgate pid {} ready, version {}, RSS {} KiB with no node", meshgate.pid(), meshgate.version, rss_idle);

    let (stop, stopped) = watch::channel(false);
    let nodes: Vec<Arc<Shared>> = (0..count)
        .map(|i| {
            let a = api_of(api, i);
            Shared::new(format!("fleet-{}-{i}", a.name()), a)
        })
        .collect();
    let before = marks(&nodes);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1);
        tasks.push(tokio::spawn(envoy::run(node.clone(), endpoint.clone(), seed, stopped.clone(), false)));
    }
    let complete = wait_quiet(&nodes, &before, true, Duration::from_secs(120)).await;
    let mut phases = vec![measure("connect", &nodes, &before, t0, complete)];
    let cpu_connect = meshgate.cpu_seconds() - cpu_idle;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = meshgate.rss_kib();
    let per_node = (rss_connected.saturating_sub(rss_idle)) as f64 / count as f64;
    eprintln!(
        "RSS with {count} nodes: {rss_connected} KiB (+{} KiB, {per_node:.1} KiB per node); CPU to connect them: {cpu_connect:.2} s",
        rss_connected.saturating_sub(rss_idle)
    );

    let mut envoys = Vec::new();
    for k in 0..real_options.count {
        let a = api_of(api, k);
        let id = format!("real-envoy-{}-{k}", a.name());
        envoys.push(real::start(
            &real_options.envoy,
            &common.meshgate,
            xds,
            &id,
            a,
            &setup.launch.workdir,
            &real_options.module_dir,
        )?);
    }
    let real_ids: Vec<String> = envoys.iter().map(|e| e.id.clone()).collect();
    if !envoys.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = match real::acks(meshgate.admin, &real_ids).await {
                Ok((acks, _)) => acks.values().all(|a| {
                    ["clusters", "listeners", "routes", "extension_configs"].iter().all(|t| a.contains_key(*t))
                }),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the real Envoys did not ACK a configuration in 60 s (logs in {})",
                    setup.launch.workdir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("{} real Envoy(s) connected: {real_ids:?}", envoys.len());
    }
    let edits: [(&str, Edit); 3] = [
        ("policy edit", |r| r.policy_revision += 1),
        ("add server", |r| r.added += 1),
        ("remove server", |r| r.removed.push(3)),
    ];
    let mut cpu_edits = Vec::new();
    for (name, edit) in edits {
        let before = marks(&nodes);
        edit(&mut registry);
        let cpu = meshgate.cpu_seconds();
        let own_cpu = meshgate::cpu_seconds(std::process::id());
        let (stop_poll, polling) = watch::channel(false);
        let poller = tokio::spawn(real::poll(meshgate.admin, real_ids.clone(), polling));
        let t0 = Instant::now();
        registry.write(&setup.registry_file).map_err(|e| e.to_string())?;
        let complete = wait_quiet(&nodes, &before, false, Duration::from_secs(60)).await;
        let mut phase = measure(name, &nodes, &before, t0, complete);
        let _ = stop_poll.send(true);
        let samples = if envoys.is_empty() { Vec::new() } else { poller.await.unwrap_or_default() };
        time_real(&mut phase, samples, &envoys, &nodes, &before, meshgate.admin, t0).await;
        // The quiet period is idle for meshgate; what it spent is the edit's cost.
        let spent = meshgate.cpu_seconds() - cpu;
        // The simulated fleet's own decoding shares the machine's cores.
        let simulator = meshgate::cpu_seconds(std::process::id()) - own_cpu;
        eprintln!("{name:>14}: meshgate CPU {spent:.2} s, simulator CPU {simulator:.2} s");
        phase["simulator_cpu_s"] = json!(simulator);
        phase["meshgate_cpu_s"] = json!(spent);
        phase["meshgate_cpu_ms_per_node"] = json!(spent * 1000.0 / count as f64);
        cpu_edits.push(spent);
        phases.push(phase);
    }
    let rss_after_edits = meshgate.rss_kib();
    let status = meshgate.admin_json("/status")?;
    let status_nodes = status["nodes"].as_object().map(|n| n.len()).unwrap_or(0);
    eprintln!(
        "after the edits: RSS {rss_after_edits} KiB; meshgate /status: version {}, {status_nodes} node(s), {} NACK(s); edit CPU {:?} s",
        status["version"], status["nacks_total"], cpu_edits
    );

    let mut storm_phase = Value::Null;
    if storm {
        let before = marks(&nodes);
        let t0 = Instant::now();
        meshgate.kill();
        registry.policy_revision += 1;
        registry.write(&setup.registry_file).map_err(|e| e.to_string())?;
        meshgate = Meshgate::start(&setup.launch, xds)?;
        let restarted = t0.elapsed();
        let (stop_poll, polling) = watch::channel(false);
        let poller = tokio::spawn(real::poll(meshgate.admin, real_ids.clone(), polling));
        let complete = wait_quiet(&nodes, &before, true, Duration::from_secs(120)).await;
        let mut phase = measure("storm", &nodes, &before, t0, complete);
        let _ = stop_poll.send(true);
        let samples = if envoys.is_empty() { Vec::new() } else { poller.await.unwrap_or_default() };
        time_real(&mut phase, samples, &envoys, &nodes, &before, meshgate.admin, t0).await;
        let versions = phase["versions"].clone();
        let on_new = versions.as_array().is_some_and(|v| v.len() == 1 && v[0] == json!(meshgate.version));
        phase["meshgate_restart_ms"] = json!(ms(restarted));
        phase["all_on_new_version"] = json!(on_new);
        phase["ok"] = json!(phase["ok"] == json!(true) && on_new);
        let reconnected = nodes.iter().zip(&before).filter(|(n, (_, c))| n.lock().connects > *c).count();
        phase["reconnected"] = json!(reconnected);
        eprintln!(
            "storm: meshgate back in {:.0} ms; {reconnected}/{count} nodes reconnected; every node on the new version {}: {on_new}",
            ms(restarted),
            meshgate.version
        );
        storm_phase = phase.clone();
        phases.push(phase);
    }
    if !envoys.is_empty() {
        let (_, nacks) = real::acks(meshgate.admin, &real_ids).await?;
        if nacks > 0 {
            return Err(format!("the real Envoys NACKed {nacks} time(s) (logs in {})", setup.launch.workdir.display()));
        }
    }
    drop(envoys);
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    meshgate.stop();

    let report = json!({
        "nodes": count,
        "api": match api { ApiChoice::Sotw => "sotw", ApiChoice::Delta => "delta", ApiChoice::Mixed => "mixed" },
        "servers": common.servers,
        "rss_idle_kib": rss_idle,
        "rss_connected_kib": rss_connected,
        "rss_per_node_kib": per_node,
        "rss_after_edits_kib": rss_after_edits,
        "cpu_connect_s": cpu_connect,
        "phases": phases,
        "storm": storm_phase,
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match json_out {
        Some(path) => std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => println!("{text}"),
    }
    let failed: Vec<&str> = report["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["ok"] != json!(true))
        .filter_map(|p| p["phase"].as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("phases that did not converge cleanly: {failed:?}"))
    }
}

async fn churn(
    common: Common,
    cycles: usize,
    concurrency: usize,
    warmup: usize,
    tolerance_kib: u64,
    api: ApiChoice,
) -> Result<(), String> {
    let (setup, _registry) = setup(&common)?;
    let meshgate = Meshgate::start(&setup.launch, "127.0.0.1:0".parse().map_err(|_| "address")?)?;
    let endpoint = format!("http://{}", meshgate.xds);
    let (_stop, stopped) = watch::channel(false);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut rss_warm = 0;
    let mut failures = 0usize;
    let mut pending = Vec::new();
    let started = Instant::now();
    for cycle in 0..cycles {
        if cycle == warmup {
            for task in pending.drain(..) {
                failures += usize::from(!matches!(task.await, Ok(true)));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_warm = meshgate.rss_kib();
            eprintln!("after {warmup} cycles: RSS {rss_warm} KiB");
        }
        let permit = semaphore.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let a = api_of(api, cycle);
        let node = Shared::new(format!("churn-{}-{cycle}", a.name()), a);
        let endpoint = endpoint.clone();
        let stopped = stopped.clone();
        pending.push(tokio::spawn(async move {
            let got = envoy::run(node, endpoint, cycle as u64 + 1, stopped, true).await;
            drop(permit);
            got
        }));
        if pending.len() > 4 * concurrency {
            for task in pending.drain(..pending.len() - concurrency) {
                failures += usize::from(!matches!(task.await, Ok(true)));
            }
        }
    }
    for task in pending.drain(..) {
        failures += usize::from(!matches!(task.await, Ok(true)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = meshgate.rss_kib();
    let status = meshgate.admin_json("/status")?;
    let kept = status["nodes"].as_object().map(|n| n.len()).unwrap_or(0);
    let report = json!({
        "cycles": cycles,
        "warmup": warmup,
        "seconds": started.elapsed().as_secs_f64(),
        "failed_cycles": failures,
        "rss_after_warmup_kib": rss_warm,
        "rss_end_kib": rss_end,
        "growth_kib": rss_end as i64 - rss_warm as i64,
        "tolerance_kib": tolerance_kib,
        "status_nodes": kept,
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    meshgate.stop();
    if failures > 0 {
        return Err(format!("{failures} cycle(s) never got a full configuration"));
    }
    if kept > 256 {
        return Err(format!("/status keeps {kept} nodes after the churn (at most 256 disconnected expected)"));
    }
    if rss_end > rss_warm + tolerance_kib {
        return Err(format!(
            "meshgate RSS grew from {rss_warm} KiB to {rss_end} KiB over {} cycles (tolerance {tolerance_kib} KiB)",
            cycles - warmup
        ));
    }
    Ok(())
}

async fn rls_load(binary: PathBuf, levels: Vec<usize>, seconds: u64, json_out: Option<PathBuf>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let redis = rls::Redis::start(dir.path())?;
    let registry_file = dir.path().join("registry.yaml");
    std::fs::write(&registry_file, rls::registry_yaml(redis.port)).map_err(|e| e.to_string())?;
    let launch = Launch { binary, registry: registry_file, workdir: dir.path().to_path_buf(), args: Vec::new() };
    let meshgate = Meshgate::start(&launch, "127.0.0.1:0".parse().map_err(|_| "address")?)?;
    let mut results = Vec::new();
    for clients in levels {
        results.push(rls::level(&meshgate, &redis, clients, Duration::from_secs(seconds)).await?);
    }
    meshgate.stop();
    let failures: u64 = results.iter().filter_map(|r| r["failures"].as_u64()).sum();
    let text = serde_json::to_string_pretty(&json!({ "levels": results })).map_err(|e| e.to_string())?;
    match json_out {
        Some(path) => std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?,
        None => println!("{text}"),
    }
    if failures > 0 {
        return Err(format!("{failures} decision(s) were not OK"));
    }
    Ok(())
}
