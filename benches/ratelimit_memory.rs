//! Memory of the in-memory rate limiter under 1,000,000 distinct principals, before and after
//! eviction of idle keys. Run: `cargo bench --bench ratelimit_memory`. Prints resident set sizes
//! (from /proc/self/status) rather than timing: it is a measurement of bounded memory.

use std::num::NonZeroU32;
use std::time::Duration;

use connector_gateway::config::{Quota, parse_rate};
use connector_gateway::ratelimit::MemoryLimiter;
use governor::clock::FakeRelativeClock;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need to honour.
    let keys: u32 = std::env::var("KEYS").ok().and_then(|k| k.parse().ok()).unwrap_or(1_000_000);
    let quota = Quota { rate: parse_rate("60/min").unwrap(), burst: NonZeroU32::new(10).unwrap() };
    let clock = FakeRelativeClock::default();
    let limiter = MemoryLimiter::with_clock(&quota, &quota, clock.clone());
    let before = rss_kib();
    for i in 0..keys {
        limiter
            .decide(&format!("6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de:{i:08x}-0000-4000-8000-000000000000"), "connector");
    }
    let loaded = rss_kib();
    let (principals, _) = limiter.tracked();
    // Every key has been idle long enough to be back at full burst.
    clock.advance(Duration::from_secs(3600));
    limiter.evict_idle();
    let evicted = rss_kib();
    // A second million of new principals: with eviction, memory is reused, not added.
    for i in 0..keys {
        limiter
            .decide(&format!("6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de:{i:08x}-1111-4000-8000-000000000000"), "connector");
    }
    let second = rss_kib();
    clock.advance(Duration::from_secs(3600));
    limiter.evict_idle();
    let second_evicted = rss_kib();
    println!("rate-limit memory, {keys} distinct principals:");
    println!("  RSS before: {before} KiB");
    println!("  RSS with {principals} keys tracked: {loaded} KiB (+{} KiB)", loaded.saturating_sub(before));
    println!("  RSS after eviction: {evicted} KiB (freed pages stay with the allocator for reuse)");
    println!(
        "  RSS with a second {keys} new principals: {second} KiB; after eviction: {second_evicted} KiB ({} keys left)",
        limiter.tracked().0
    );
}
