//! `make bench-peers`: issuelock against what users would pick instead, in one run on one
//! API server: the raw API calls (the floor), issuelock's library, a Lease per issue with
//! `kube-lease-manager` and with client-go's leaderelection, and Redis `SET NX PX`.
//! Prints figures and their ratio to the floor; never fails on a time limit.

mod client_go;
mod controller;
mod cpu;
mod peers;
mod phases;
mod process;
mod report;
mod stats;
mod writes;

use clap::{Parser, Subcommand, ValueEnum};
use peers::issuelock::Issuelock;
use peers::lease_manager::LeaseManagerPeer;
use peers::raw::Raw;
use peers::redis::RedisPeer;
use peers::{Ctx, LockPeer};
use process::Proc;
use report::Report;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use writes::Writes;

const FLOOR: &str = "raw create / delete (floor)";
const ISSUELOCK: &str = "issuelock try_acquire / release";
const LEASE_MANAGER: &str = "kube-lease-manager, Lease per issue";
const CLIENT_GO: &str = "client-go LeaseLock, Lease per issue";
const REDIS: &str = "Redis SET NX PX / compare-and-delete";

#[derive(Parser)]
#[command(about = "issuelock against its peers on one API server (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every phase for every peer and print the report.
    Run(RunArgs),
    /// Take one issue's lock with a peer, print "held", keep it until killed.
    Hold(HoldArgs),
}

#[derive(clap::Args)]
struct Common {
    /// Namespace of the API objects (must exist).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// The Redis server.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The `issuelock` release binary (for the controller).
    #[arg(long)]
    issuelock: PathBuf,
    /// The client-go program.
    #[arg(long)]
    leasepeer: PathBuf,
    /// Operations per latency phase.
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// Operations in flight in a latency phase.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Run only issuelock's overhead phase (quick, for work on the client's latency).
    #[arg(long)]
    overhead_only: bool,
    /// A process whose CPU time the overhead phase counts, as NAME=PID (repeatable;
    /// this client is always counted).
    #[arg(long = "cpu", value_name = "NAME=PID")]
    cpu: Vec<cpu::Meter>,
    /// Interleaved rounds of the overhead and contention phases.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Contending clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Issues the contending clients pick from.
    #[arg(long, default_value_t = 1000)]
    issues: usize,
    /// Length of each contention phase.
    #[arg(long, default_value_t = 10.0)]
    contend_seconds: f64,
    /// Locks held while counting writes.
    #[arg(long, default_value_t = 1000)]
    hold_locks: usize,
    /// How long writes are counted while they are held.
    #[arg(long, default_value_t = 60.0)]
    hold_seconds: f64,
    /// Idle time measured first: the API server's own writes, subtracted.
    #[arg(long, default_value_t = 20.0)]
    baseline_seconds: f64,
}

#[derive(clap::Args)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum)]
    system: System,
    #[arg(long)]
    issue: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum System {
    Issuelock,
    LeaseManager,
    Redis,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Run(args) => run(args).await,
        Cmd::Hold(args) => hold(args).await,
    }
}

fn ctx(common: &Common) -> Ctx {
    Ctx {
        namespace: common.namespace.clone(),
        redis_url: common.redis_url.clone(),
    }
}

async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let ctx = ctx(&args.common);
    match args.system {
        System::Issuelock => hold_with::<Issuelock>(&ctx, &args.issue).await,
        System::LeaseManager => hold_with::<LeaseManagerPeer>(&ctx, &args.issue).await,
        System::Redis => hold_with::<RedisPeer>(&ctx, &args.issue).await,
    }
}

async fn hold_with<P: LockPeer>(ctx: &Ctx, issue: &str) -> anyhow::Result<()> {
    let peer = P::connect(ctx, &format!("dying-{}", std::process::id())).await?;
    let _held = peer.wait_acquire(issue).await?;
    println!("held");
    // Renewals go on in the background until this process is killed.
    futures::future::pending::<()>().await;
    Ok(())
}

fn step(what: &str) {
    eprintln!("[bench-peers {}] {what}", clock());
}

fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let ctx = ctx(&args.common);
    let run = std::process::id().to_string();
    let go = client_go::ClientGo {
        bin: args.leasepeer.clone(),
        namespace: ctx.namespace.clone(),
    };
    let (n, c) = (args.iterations, args.concurrency);
    let mut report = Report::new(n, c, args.clients, args.issues);

    // Once with one call in flight (the API server idle between calls: each call's own
    // latency), once loaded with `c` in flight (on a small machine the API server's CPU is
    // then the bottleneck, and every byte a call adds costs latency).
    let mut meters = args.cpu.clone();
    meters.push(cpu::Meter::client());
    let mut in_flight = vec![1, c.max(1)];
    in_flight.dedup();
    for k in in_flight {
        step(&format!(
            "overhead: floor, library metadata, ownerReference, library's object raw, issuelock (interleaved, {k} in flight)"
        ));
        let tag = format!("{run}c{k}");
        report.overhead(
            k,
            phases::overhead(&ctx, &tag, n, k, args.rounds, &meters).await?,
        );
    }
    if args.overhead_only {
        println!("{}", report.render_overhead());
        return Ok(());
    }
    step("latency: raw create/delete (floor)");
    report.latency(FLOOR, phases::latency::<Raw>(&ctx, &run, n, c).await?);
    step("latency: issuelock");
    report.latency(
        ISSUELOCK,
        phases::latency::<Issuelock>(&ctx, &run, n, c).await?,
    );
    step("latency: kube-lease-manager");
    report.latency(
        LEASE_MANAGER,
        phases::latency::<LeaseManagerPeer>(&ctx, &run, n, c).await?,
    );
    step("latency: client-go leaderelection");
    report.latency(CLIENT_GO, go.latency(&format!("cg{run}"), n, c).await?);
    step("latency: redis");
    report.latency(REDIS, phases::latency::<RedisPeer>(&ctx, &run, n, c).await?);

    // Interleaved rounds, so that a change in the machine's load hits every system alike.
    let (k, i) = (args.clients, args.issues);
    let rounds = args.rounds.max(1);
    let s = args.contend_seconds / rounds as f64;
    let mut totals: Vec<phases::Contention> =
        (0..5).map(|_| phases::Contention::default()).collect();
    for r in 1..=rounds {
        step(&format!("contention: round {r} of {rounds}"));
        totals[0].add(phases::contend::<Raw>(&ctx, &run, k, i, s).await?);
        totals[1].add(phases::contend::<Issuelock>(&ctx, &run, k, i, s).await?);
        totals[2].add(phases::contend::<LeaseManagerPeer>(&ctx, &run, k, i, s).await?);
        let (acquired, held, wall) = go.contend(&format!("cg{run}"), k, i, s).await?;
        totals[3].add(phases::Contention {
            acquired,
            held,
            wall,
        });
        totals[4].add(phases::contend::<RedisPeer>(&ctx, &run, k, i, s).await?);
    }
    for (name, total) in [FLOOR, ISSUELOCK, LEASE_MANAGER, CLIENT_GO, REDIS]
        .into_iter()
        .zip(totals)
    {
        report.contention(name, total);
    }

    let api = peers::kube_client().await?;
    step("writes: idle baseline");
    let idle = count_writes(&api, args.baseline_seconds).await?;
    let background = |secs: f64| idle.get("leases") / args.baseline_seconds * secs;
    let (locks, secs) = (args.hold_locks, args.hold_seconds);

    step("writes and holder death: issuelock (with its controller)");
    let controller = controller::start(&args.issuelock, &ctx.namespace).await?;
    let w = hold_and_count::<Issuelock>(&ctx, &api, &run, locks, secs).await?;
    report.writes(ISSUELOCK, &w, background(secs), locks, secs);
    let d = death::<Issuelock>(&ctx, &run, "issuelock").await?;
    report.death(
        ISSUELOCK,
        d,
        "the controller reclaims once the 15 s lease is stale; the next holder polls every 0.25 s",
    );
    controller.terminate().await;

    step("writes and holder death: kube-lease-manager");
    let w = hold_and_count::<LeaseManagerPeer>(&ctx, &api, &run, locks, secs).await?;
    report.writes(LEASE_MANAGER, &w, background(secs), locks, secs);
    let d = death::<LeaseManagerPeer>(&ctx, &run, "lease-manager").await?;
    report.death(
        LEASE_MANAGER,
        d,
        "15 s lease; the next holder sleeps until it expires, then up to 1 s more",
    );

    step("writes and holder death: client-go");
    let holder = go.hold(&format!("cgh{run}"), locks).await?;
    settle().await;
    let w = count_writes(&api, secs).await?;
    holder.finish(Duration::from_secs(300)).await?;
    report.writes(CLIENT_GO, &w, background(secs), locks, secs);
    let prefix = format!("cgd{run}");
    let dying = go.hold(&prefix, 1).await?;
    let mut waiter = go.waiter(&prefix)?;
    let d = phases::death(dying, async {
        waiter.expect("acquired", Duration::from_secs(120)).await?;
        Ok(Instant::now())
    })
    .await?;
    report.death(
        CLIENT_GO,
        d,
        "15 s lease; the next holder retries every 2 s (jittered up to 4.4 s)",
    );

    step("writes and holder death: redis");
    let (peer, held) = phases::take_many::<RedisPeer>(&ctx, &run, locks).await?;
    settle().await;
    let before = peers::redis::writes_sent(&ctx.redis_url).await?;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let after = peers::redis::writes_sent(&ctx.redis_url).await?;
    phases::give_back(peer, held).await?;
    report.redis_writes(REDIS, after.saturating_sub(before), locks, secs);
    let d = death::<RedisPeer>(&ctx, &run, "redis").await?;
    report.death(REDIS, d, "15 s TTL; the next holder polls every 0.25 s");

    println!("{}", report.render());
    Ok(())
}

/// Time from SIGKILLing a holder process of `system` to a waiting client holding.
async fn death<P: LockPeer>(ctx: &Ctx, run: &str, system: &str) -> anyhow::Result<Duration> {
    let issue = format!("{run}/death/{system}");
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["hold", "--system", system, "--issue", &issue])
        .args(["--namespace", &ctx.namespace, "--redis-url", &ctx.redis_url]);
    let mut holder = Proc::spawn(cmd, &format!("{system} holder"))?;
    holder.expect("held", Duration::from_secs(120)).await?;
    let next = P::connect(ctx, &format!("next-{run}")).await?;
    let mut taken = None;
    let took = phases::death(holder, async {
        let held = next.wait_acquire(&issue).await?;
        let at = Instant::now();
        taken = Some(held);
        Ok(at)
    })
    .await;
    if let Some(held) = taken {
        next.release(held).await?;
    }
    next.shutdown().await?;
    took
}

/// One client takes `locks` locks and holds them while the API writes are counted.
async fn hold_and_count<P: LockPeer>(
    ctx: &Ctx,
    api: &kube::Client,
    run: &str,
    locks: usize,
    secs: f64,
) -> anyhow::Result<Writes> {
    let (peer, held) = phases::take_many::<P>(ctx, run, locks).await?;
    settle().await;
    let w = count_writes(api, secs).await?;
    phases::give_back(peer, held).await?;
    Ok(w)
}

/// Lets acquisitions' after-effects (the controller's first look, first renewals) pass.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// Write requests the API server served during the next `secs` seconds.
async fn count_writes(api: &kube::Client, secs: f64) -> anyhow::Result<Writes> {
    let before = Writes::scrape(api).await?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let after = Writes::scrape(api).await?;
    anyhow::ensure!(
        start.elapsed().as_secs_f64() < secs * 1.5,
        "the write count took too long"
    );
    Ok(after.since(&before))
}
