//! `issuelock bench`: latency and throughput of acquire and release against the floor,
//! the same raw API calls (create, delete) made through the same API server without the
//! library. Prints figures; it never fails on a time limit.

use crate::crd::{Holder, IssueLock, IssueLockSpec};
use crate::error::{Deleted, Error, classify, delete_exact};
use crate::lock::{Acquisition, LockClient};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

/// Settings of one benchmark run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Operations per measured phase.
    pub iterations: usize,
    /// Operations in flight at once.
    pub concurrency: usize,
}

/// Latencies of one phase.
struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }

    fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
        format!(
            "{:<28} {:>8} {:>8} {:>8} {:>8} {:>10.0}",
            self.name,
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
            self.latencies.len() as f64 / self.wall.as_secs_f64()
        )
    }
}

/// Runs the benchmark in `locks`'s namespace and returns the report.
pub async fn run(
    client: kube::Client,
    locks: LockClient,
    config: BenchConfig,
) -> Result<String, Error> {
    let BenchConfig {
        iterations,
        concurrency,
    } = config;
    let ns = locks.namespace().to_owned();
    let api: Api<IssueLock> = Api::namespaced(client, &ns);
    let run_id = std::process::id();

    // Warm up connections and the API server's caches (not measured).
    for i in 0..32 {
        let lock = IssueLock::new(
            &format!("warmup-{run_id}-{i}"),
            spec(&format!("warmup/{i}"), locks.holder().clone()),
        );
        api.create(&PostParams::default(), &lock)
            .await
            .map_err(|e| classify("create lock", &ns, e))?;
        api.delete(&format!("warmup-{run_id}-{i}"), &DeleteParams::default())
            .await
            .map_err(|e| classify("delete lock", &ns, e))?;
    }

    // Floor: raw create and delete of IssueLock objects.
    let created = timed("raw create (floor)", iterations, concurrency, |i| {
        let api = api.clone();
        let holder = locks.holder().clone();
        async move {
            let name = format!("floor-{run_id}-{i}");
            let lock = IssueLock::new(&name, spec(&format!("floor/{i}"), holder));
            let t = Instant::now();
            let made = api
                .create(&PostParams::default(), &lock)
                .await
                .map_err(|e| classify("create lock", "", e))?;
            Ok((t.elapsed(), made.metadata.uid.unwrap_or_default()))
        }
    })
    .await?;
    let (create_phase, uids) = created;
    let deleted = timed("raw delete (floor)", iterations, concurrency, |i| {
        let api = api.clone();
        let uid = uids[i].clone();
        async move {
            let name = format!("floor-{run_id}-{i}");
            let t = Instant::now();
            match delete_exact(&api, &name, &uid, None).await {
                Ok(Deleted::Deleted) => {}
                Ok(Deleted::GoneOrChanged) => {
                    // Someone else deleted or replaced the floor's own object.
                    return Err(Error::LockLost { issue: name });
                }
                Err(e) => return Err(classify("delete lock", "", e)),
            }
            Ok((t.elapsed(), String::new()))
        }
    })
    .await?;

    // Ours: try_acquire and release through the library.
    let guards = tokio::sync::Mutex::new(Vec::with_capacity(iterations));
    let acquired = timed("try_acquire (free issue)", iterations, concurrency, |i| {
        let locks = locks.clone();
        let guards = &guards;
        async move {
            let t = Instant::now();
            let got = locks.try_acquire(&format!("bench/{run_id}/{i}")).await?;
            let took = t.elapsed();
            match got {
                Acquisition::Acquired(g) => guards.lock().await.push(g),
                Acquisition::Held(by) => {
                    return Err(Error::Config(format!(
                        "bench issue unexpectedly held by {}",
                        by.holder.identity
                    )));
                }
            }
            Ok((took, String::new()))
        }
    })
    .await?;
    let contended = timed(
        "try_acquire (held: 409+GET)",
        iterations,
        concurrency,
        |i| {
            let locks = locks.clone();
            async move {
                let t = Instant::now();
                let got = locks
                    .try_acquire(&format!("bench/{run_id}/{}", i % 16))
                    .await?;
                debug_assert!(matches!(got, Acquisition::Held(_)));
                Ok((t.elapsed(), String::new()))
            }
        },
    )
    .await?;
    let held: Vec<_> = std::mem::take(&mut *guards.lock().await);
    let slots: Vec<_> = held
        .into_iter()
        .map(|g| std::sync::Mutex::new(Some(g)))
        .collect();
    let released = timed("release", iterations, concurrency, |i| {
        let guard = slots[i].lock().expect("slot").take();
        async move {
            let guard = guard.expect("one guard per iteration");
            let t = Instant::now();
            guard.release().await?;
            Ok((t.elapsed(), String::new()))
        }
    })
    .await?;

    let phases = [
        &create_phase,
        &deleted.0,
        &acquired.0,
        &contended.0,
        &released.0,
    ];
    let mut out = format!(
        "issuelock bench: {iterations} operations per phase, {concurrency} in flight, namespace {ns}\n\n{:<28} {:>8} {:>8} {:>8} {:>8} {:>10}\n",
        "phase (latency in ms)", "p50", "p90", "p99", "max", "ops/s"
    );
    for p in phases {
        out.push_str(&p.row());
        out.push('\n');
    }
    let ratio = |a: &Phase, b: &Phase, p: f64| {
        a.percentile(p).as_secs_f64() / b.percentile(p).as_secs_f64()
    };
    out.push_str(&format!(
        "\nratio to the floor: acquire/create p50 {:.2}x p99 {:.2}x; release/delete p50 {:.2}x p99 {:.2}x\n",
        ratio(&acquired.0, &create_phase, 50.0),
        ratio(&acquired.0, &create_phase, 99.0),
        ratio(&released.0, &deleted.0, 50.0),
        ratio(&released.0, &deleted.0, 99.0),
    ));
    out.push_str(&format!("memory: {}\n", memory()));
    Ok(out)
}

fn spec(issue: &str, holder: Holder) -> IssueLockSpec {
    IssueLockSpec {
        issue: issue.to_owned(),
        holder,
        max_hold_seconds: None,
        signature: None,
    }
}

async fn timed<F, Fut>(
    name: &'static str,
    n: usize,
    concurrency: usize,
    op: F,
) -> Result<(Phase, Vec<String>), Error>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(Duration, String), Error>>,
{
    let start = Instant::now();
    let mut results: Vec<(usize, Duration, String)> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            async move { fut.await.map(|(d, s)| (i, d, s)) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let wall = start.elapsed();
    results.sort_by_key(|(i, _, _)| *i);
    let latencies = results.iter().map(|(_, d, _)| *d).collect();
    let extra = results.into_iter().map(|(_, _, s)| s).collect();
    Ok((
        Phase {
            name,
            latencies,
            wall,
        },
        extra,
    ))
}

/// Resident and peak memory of this process, from /proc.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!("VmRSS {} (peak VmHWM {})", field("VmRSS:"), field("VmHWM:"))
}
