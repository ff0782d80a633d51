//! `redis-benchmark` (from Debian's `redis-tools`, installed with
//! `redis-server`) against the benchmark's own server: what Redis alone
//! answers on this machine in the same run, for the plugin and native rows
//! to be read against. GET of one key, and EVALSHA of a script that GETs
//! it (the shape of the patterns' Lua steps), at concurrency 1 and 32.

use std::process::Command;

use anyhow::{Context as _, bail};
use redis::IntoConnectionInfo as _;

use crate::report::RedisBenchmarkRow;

/// The key both commands read (`redloom-bench` flushes the database between
/// sections, so it is set here first).
const KEY: &str = "redis-benchmark:key";
const SCRIPT: &str = "return redis.call('GET', KEYS[1])";

/// Runs GET and EVALSHA at concurrency 1 and 32, `requests` each.
pub async fn measure(
    url: &str,
    admin: &mut redis::aio::MultiplexedConnection,
    requests: u64,
) -> anyhow::Result<Vec<RedisBenchmarkRow>> {
    let _: () = redis::cmd("SET")
        .arg(KEY)
        .arg(&[b'x'; 64][..])
        .query_async(admin)
        .await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(admin)
        .await?;
    let info = url.into_connection_info()?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        other => bail!("redis-benchmark needs a TCP server, not {other}"),
    };
    let password = info.redis_settings().password().map(str::to_string);
    let mut rows = Vec::new();
    for (name, args) in [
        ("GET", vec!["GET".to_string(), KEY.to_string()]),
        (
            "EVALSHA (a GET in Lua)",
            vec!["EVALSHA".into(), sha.clone(), "1".into(), KEY.into()],
        ),
    ] {
        for c in [1usize, 32] {
            let mut cmd = Command::new("redis-benchmark");
            cmd.args(["-h", &host, "-p", &port.to_string()])
                .args(["-c", &c.to_string(), "-n", &requests.to_string()])
                .args(["-q", "--csv"])
                .args(&args);
            if let Some(p) = &password {
                cmd.env("REDISCLI_AUTH", p);
            }
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await?
                .context(
                    "running redis-benchmark (Debian's redis-tools; scripts/setup installs it)",
                )?;
            if !out.status.success() {
                bail!(
                    "redis-benchmark {name} -c {c} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let (throughput, p50_ms) = parse_csv(&String::from_utf8_lossy(&out.stdout))
                .with_context(|| format!("redis-benchmark {name} -c {c}: unexpected output"))?;
            rows.push(RedisBenchmarkRow {
                command: name.to_string(),
                concurrency: c,
                throughput,
                p50_us: p50_ms * 1000.0,
            });
        }
    }
    Ok(rows)
}

/// Requests/s and p50 (ms) from `--csv` output: a header line
/// (`"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",…`)
/// and one row.
fn parse_csv(text: &str) -> anyhow::Result<(f64, f64)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let split = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let header = split(lines.next().context("no header line")?);
    let row = split(lines.next().context("no result line")?);
    let field = |name: &str| -> anyhow::Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no `{name}` column in {header:?}"))?;
        row.get(i)
            .with_context(|| format!("no `{name}` value in {row:?}"))?
            .parse()
            .with_context(|| format!("`{name}` is not a number in {row:?}"))
    };
    Ok((field("rps")?, field("p50_latency_ms")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSV of redis-benchmark 7.0.
    #[test]
    fn parses_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET redis-benchmark:key\",\"41152.26\",\"0.022\",\"0.008\",\"0.023\",\"0.031\",\"0.039\",\"0.279\"\n";
        assert_eq!(parse_csv(text).unwrap(), (41152.26, 0.023));
        assert!(parse_csv("\"test\",\"rps\"\n\"GET\",\"1\"\n").is_err());
    }
}
