//! The measured phases, the same for every [`LockPeer`].

use crate::cpu::{Meter, Usage};
use crate::peers::{Ctx, LockPeer};
use crate::process::Proc;
use crate::report::OverheadRow;
use crate::stats::Latencies;
use anyhow::bail;
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Untimed acquire/release pairs before a latency phase (connections, caches).
const WARMUP: usize = 32;

/// Acquire then release latencies of `n` free issues, `c` in flight, one client.
pub async fn latency<P: LockPeer>(
    ctx: &Ctx,
    run: &str,
    n: usize,
    c: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let peer = P::connect(ctx, &format!("lat-{run}")).await?;
    for i in 0..WARMUP {
        let held = must_take(&peer, &format!("{run}/warmup/{i}")).await?;
        peer.release(held).await?;
    }
    let issues: Vec<String> = (0..n).map(|i| format!("{run}/lat/{i}")).collect();
    let (acquire, release) = batch(&peer, &issues, c).await?;
    peer.shutdown().await?;
    Ok((Latencies::new(acquire), Latencies::new(release)))
}

/// Takes a free issue the way a user waiting for it would ([`LockPeer::wait_acquire`]:
/// one attempt for the polling peers, kube-lease-manager's `changed()` without the
/// contention phase's 1 s window, which a loaded API server can exceed), within a minute.
async fn must_take<P: LockPeer>(peer: &P, issue: &str) -> anyhow::Result<P::Held> {
    match tokio::time::timeout(Duration::from_secs(60), peer.wait_acquire(issue)).await {
        Ok(held) => held,
        Err(_) => bail!("free issue {issue} not taken within 60 s"),
    }
}

/// Outcome of the contention phase.
#[derive(Default)]
pub struct Contention {
    pub acquired: u64,
    pub held: u64,
    pub wall: Duration,
}

impl Contention {
    /// Adds another round's counts.
    pub fn add(&mut self, other: Contention) {
        self.acquired += other.acquired;
        self.held += other.held;
        self.wall += other.wall;
    }

    pub fn per_second(&self) -> f64 {
        self.acquired as f64 / self.wall.as_secs_f64()
    }
}

/// `clients` clients (each its own connection and identity), each taking a random one
/// of `issues` issues and releasing it at once, for `secs` seconds.
pub async fn contend<P: LockPeer>(
    ctx: &Ctx,
    run: &str,
    clients: usize,
    issues: usize,
    secs: f64,
) -> anyhow::Result<Contention> {
    let mut peers = Vec::with_capacity(clients);
    for i in 0..clients {
        peers.push(P::connect(ctx, &format!("con-{run}-{i}")).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let counts = futures::future::join_all(peers.iter().enumerate().map(|(i, peer)| async move {
        let mut random = Random::new(i as u64 + 1);
        let (mut acquired, mut held) = (0u64, 0u64);
        while Instant::now() < deadline {
            let issue = format!("{run}/con/{}", random.below(issues as u64));
            match peer.try_acquire(&issue).await? {
                Some(h) => {
                    acquired += 1;
                    peer.release(h).await?;
                }
                None => held += 1,
            }
        }
        anyhow::Ok((acquired, held))
    }))
    .await;
    let wall = start.elapsed();
    let mut total = Contention {
        acquired: 0,
        held: 0,
        wall,
    };
    for c in counts {
        let (a, h) = c?;
        total.acquired += a;
        total.held += h;
    }
    for peer in peers {
        peer.shutdown().await?;
    }
    Ok(total)
}

/// One client holding `n` locks until the returned closure is given back.
pub async fn take_many<P: LockPeer>(
    ctx: &Ctx,
    run: &str,
    n: usize,
) -> anyhow::Result<(P, Vec<P::Held>)> {
    let peer = P::connect(ctx, &format!("hold-{run}")).await?;
    let held = futures::stream::iter(0..n)
        .map(|i| {
            let peer = &peer;
            async move { must_take(peer, &format!("{run}/hold/{i}")).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok((peer, held))
}

/// Releases what [`take_many`] took. Releases that fail (an API server overloaded by
/// 1,000 held locks' side effects) are reported, not fatal: the figures are taken.
pub async fn give_back<P: LockPeer>(peer: P, held: Vec<P::Held>) -> anyhow::Result<()> {
    let failed: Vec<anyhow::Error> = futures::stream::iter(held)
        .map(|h| peer.release(h))
        .buffer_unordered(8)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    if let Some(first) = failed.first() {
        eprintln!(
            "bench-peers: {} releases failed after the count, e.g.: {first:#}",
            failed.len()
        );
    }
    if let Err(e) = peer.shutdown().await {
        eprintln!("bench-peers: shutdown after the count failed: {e:#}");
    }
    Ok(())
}

/// Time from SIGKILLing `holder` (a process holding the lock) to `next` holding it;
/// `next` starts waiting before the kill and returns when it took the lock.
pub async fn death(
    mut holder: Proc,
    next: impl Future<Output = anyhow::Result<Instant>>,
) -> anyhow::Result<Duration> {
    let kill = async {
        // Let the waiter find the lock held first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        holder.sigkill()?;
        anyhow::Ok(Instant::now())
    };
    let (killed, taken) = tokio::try_join!(kill, next)?;
    if taken < killed {
        bail!("the next holder took the lock before the holder was killed");
    }
    Ok(taken - killed)
}

/// A small deterministic generator (xorshift64*), so each run picks the same issues.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
    /// `0..n` in a random order (Fisher-Yates).
    fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
        v
    }
}

/// Takes then releases each of `issues`, `c` in flight; returns both latencies.
async fn batch<P: LockPeer>(
    peer: &P,
    issues: &[String],
    c: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let taken: Vec<(Duration, P::Held)> = futures::stream::iter(issues)
        .map(|issue| async move {
            let t = Instant::now();
            let held = must_take(peer, issue).await?;
            anyhow::Ok((t.elapsed(), held))
        })
        .buffer_unordered(c.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let (acquire, held): (Vec<_>, Vec<_>) = taken.into_iter().unzip();
    let release = futures::stream::iter(held)
        .map(|h| async move {
            let t = Instant::now();
            peer.release(h).await?;
            anyhow::Ok(t.elapsed())
        })
        .buffer_unordered(c.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok((acquire, release))
}

/// Where issuelock's acquire and release time goes: the floor, the same raw calls with
/// the library's metadata (label, nonce annotation), with its ownerReference too, with
/// the library's own holder record and live Lease (the object the library sends, sent
/// raw), and the library itself, in `rounds` interleaved rounds of `n / rounds` issues
/// each, so a change in the machine's load hits all five alike. Around each counted batch, the CPU
/// time of each of `meters` is read (after `SETTLE`, so the work a batch leaves behind,
/// such as watch events, is counted with it), less what they use when idle.
pub async fn overhead(
    ctx: &Ctx,
    run: &str,
    n: usize,
    c: usize,
    rounds: usize,
    meters: &[Meter],
) -> anyhow::Result<Overhead> {
    use crate::peers::issuelock::Issuelock;
    use crate::peers::raw::Raw;
    let plain = Raw::with_shape(ctx, &format!("ovp-{run}"), None).await?;
    let labelled = Raw::with_shape(ctx, &format!("ovl-{run}"), Some(false)).await?;
    let owned = Raw::with_shape(ctx, &format!("ovo-{run}"), Some(true)).await?;
    let ours = Issuelock::connect(ctx, &format!("ovi-{run}")).await?;
    let same = Raw::like(ctx, ours.client()).await?;
    let names = [
        "raw create / delete (floor)",
        "+ label and nonce annotation",
        "+ ownerReference to the Lease",
        "+ the library's holder and live Lease",
        "issuelock try_acquire / release",
    ];
    let idle = idle_rates(meters).await?;
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); names.len()];
    // Per variant: CPU time used around its counted batches, and how long those took.
    let mut cpu: Vec<(Usage, Duration)> = vec![Default::default(); names.len()];
    let per_round = (n / rounds.max(1)).max(1);
    let mut order = Random::new(n as u64 ^ c as u64);
    for round in 0..=rounds {
        // Round 0 warms every variant up and is not counted.
        let size = if round == 0 { WARMUP } else { per_round };
        // Each round runs the variants in another order, so that none always follows the
        // same one (what a batch leaves behind, such as the API server's garbage, is paid
        // for during the next).
        for v in order.shuffled(names.len()) {
            let out = &mut samples[v];
            let issues: Vec<String> = (0..size)
                .map(|i| format!("{run}/ov{v}/{round}/{i}"))
                .collect();
            let before = Usage::read(meters)?;
            let started = Instant::now();
            let (a, r) = match v {
                0 => batch(&plain, &issues, c).await?,
                1 => batch(&labelled, &issues, c).await?,
                2 => batch(&owned, &issues, c).await?,
                3 => batch(&same, &issues, c).await?,
                _ => batch(&ours, &issues, c).await?,
            };
            tokio::time::sleep(SETTLE).await;
            let after = Usage::read(meters)?;
            if round > 0 {
                out.0.extend(a);
                out.1.extend(r);
                cpu[v].0.add_since(&before, &after);
                cpu[v].1 += started.elapsed();
            }
        }
    }
    ours.shutdown().await?;
    Ok(Overhead {
        rows: names
            .into_iter()
            .zip(samples)
            .map(|(name, (a, r))| (name, Latencies::new(a), Latencies::new(r)))
            .collect(),
        cpu: cpu
            .into_iter()
            .map(|(mut used, over)| {
                used.subtract_idle(&idle, over);
                used
            })
            .collect(),
        meters: meters.iter().map(|m| m.name.clone()).collect(),
        pairs: per_round * rounds,
    })
}

/// How long after a batch its CPU time is still counted.
const SETTLE: Duration = Duration::from_millis(300);

/// What each meter uses per second while no batch runs (timers, heartbeats, the API
/// server's own loops), measured over `IDLE` once what came before (clients connecting,
/// their Leases) has had time to settle.
async fn idle_rates(meters: &[Meter]) -> anyhow::Result<Usage> {
    const IDLE: Duration = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = Usage::read(meters)?;
    tokio::time::sleep(IDLE).await;
    let mut rates = Usage::default();
    rates.add_since(&before, &Usage::read(meters)?);
    Ok(rates.per(IDLE))
}

/// The overhead phase's figures: latencies per variant, and the CPU time each meter spent
/// on each variant's `pairs` acquire-release pairs.
pub struct Overhead {
    pub rows: Vec<OverheadRow>,
    pub cpu: Vec<Usage>,
    pub meters: Vec<String>,
    pub pairs: usize,
}
