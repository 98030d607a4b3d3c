//! Redis: `SET key token NX PX` to take, a compare-and-delete script to give back, and a
//! compare-and-`PEXPIRE` script every third of the TTL while holding (a lock held past
//! its TTL would otherwise be lost).

use super::{Ctx, LockPeer};
use redis::Script;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The key's time to live: the same 15 s as the Leases of the other peers.
pub const TTL: Duration = Duration::from_secs(15);

const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
const EXTEND: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

pub struct RedisPeer {
    connection: MultiplexedConnection,
    who: String,
    tokens: AtomicU64,
    release: Script,
    extend: Script,
}

/// A held key: its name, our token and the task extending its TTL.
pub struct Held {
    key: String,
    token: String,
    extending: JoinHandle<()>,
}

impl LockPeer for RedisPeer {
    type Held = Held;

    async fn connect(ctx: &Ctx, who: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(ctx.redis_url.as_str())?;
        Ok(Self {
            connection: client.get_multiplexed_async_connection().await?,
            who: format!("{who}-{}", std::process::id()),
            tokens: AtomicU64::new(0),
            release: Script::new(RELEASE),
            extend: Script::new(EXTEND),
        })
    }

    async fn try_acquire(&self, issue: &str) -> anyhow::Result<Option<Held>> {
        let key = format!("lock:{issue}");
        let token = format!(
            "{}-{}",
            self.who,
            self.tokens.fetch_add(1, Ordering::Relaxed)
        );
        let mut c = self.connection.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let extend = self.extend.clone();
        let (k, t) = (key.clone(), token.clone());
        let extending = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TTL / 3).await;
                let kept: redis::RedisResult<i64> = extend
                    .key(&k)
                    .arg(&t)
                    .arg(TTL.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await;
                if matches!(kept, Ok(0)) {
                    return;
                }
            }
        });
        Ok(Some(Held {
            key,
            token,
            extending,
        }))
    }

    async fn release(&self, held: Held) -> anyhow::Result<()> {
        held.extending.abort();
        let mut c = self.connection.clone();
        let deleted: i64 = self
            .release
            .key(&held.key)
            .arg(&held.token)
            .invoke_async(&mut c)
            .await?;
        anyhow::ensure!(deleted == 1, "lock {} was lost before release", held.key);
        Ok(())
    }
}

/// Write requests clients sent the Redis server so far: `SET`, `EVAL` and `EVALSHA`
/// calls (`INFO commandstats`; the commands a script runs are counted apart, not here).
pub async fn writes_sent(url: &str) -> anyhow::Result<u64> {
    let mut c = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, stats) = l.split_once(':')?;
            matches!(name, "cmdstat_set" | "cmdstat_eval" | "cmdstat_evalsha").then_some(stats)
        })
        .filter_map(|stats| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum())
}
