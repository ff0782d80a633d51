//! Test guest: a plugin that misbehaves on request, to prove the host
//! contains it. The input is a command word and an optional number.
//!
//! | input | what it does |
//! |---|---|
//! | `flood` | `kv::increment("flood")` until a call fails; returns the count |
//! | `yield-loop` | calls `kv::get` forever, ignoring every error |
//! | `recurse` | recurses without end (stack overflow) |
//! | `panic` | panics (the instance traps) |
//! | `huge-output N` | returns N MiB of output |
//! | `big-reply N` | stores an N MiB value, then reads it back |
//! | `burn N [MARK]` | runs guest code for N milliseconds (by the wall clock), then returns `done` |
//! | `span N` | like `burn N`; returns `START END`, the wall-clock microseconds (since the Unix epoch) between which it ran |
//! | `spin [MARK]` | loops forever without a host call |
//! | `hold KEY [MARK]` | waits (sleeping, 20 ms between looks) until the key `KEY` exists, then returns `done`; a test holds a slot this way for exactly as long as it needs |
//! | `memory-bomb N [MARK]` | allocates and touches 1 MiB blocks without end, running N ms of guest code between blocks |
//! | `grow-table N` | grows its function table by N elements (`table.grow`); returns the old size |
//! | `escape` | tries the filesystem, the environment and the network; reports what it got |
//! | `host-loop` | calls `config::get` forever: host calls that never wait for anything |
//! | `log-flood N` | logs N messages of 1 KiB; returns N |
//! | `log-forge` | logs one message carrying a newline and a forged log line, and writes the same to stdout |
//! | `fill N` | stores N values of 512 KiB (keys `fill-0`, ...); returns how many were stored, or fails with the first error |
//! | `write N` | stores one value of N KiB under `write` |
//! | `publish N CHANNEL [COUNT]` | publishes COUNT (default 1) messages of N KiB on `CHANNEL`, one after another; returns the receivers summed |
//!
//! `MARK`: when given, the guest first increments the key `MARK` by one, so
//! a test can tell that the invocation is running (not waiting for a slot).
//!
//! Its message handler is a slow subscriber: it runs guest code for one
//! second per message.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redloom_sdk::{Error, Invoke, OnMessage, Result, config, kv, log, pubsub};

struct Hostile;

impl Invoke for Hostile {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let input = String::from_utf8(input)?;
        let mut words = input.split_whitespace();
        let command = words.next().unwrap_or("");
        let mut number = || -> Result<u64> {
            words
                .next()
                .map(str::parse)
                .transpose()
                .map_err(|_| Error::invalid("bad number"))
                .map(|n| n.unwrap_or(1))
        };
        match command {
            "flood" => {
                let mut count = 0u64;
                while kv::increment("flood", 1).is_ok() {
                    count += 1;
                }
                Ok(count.to_string().into_bytes())
            }
            "yield-loop" => loop {
                let _ = std::hint::black_box(kv::get("anything"));
            },
            "recurse" => Ok(recurse(std::hint::black_box(1)).to_string().into_bytes()),
            "panic" => panic!("deliberate panic"),
            "huge-output" => Ok(vec![b'x'; (number()? as usize) << 20]),
            "big-reply" => {
                let n = number()?;
                kv::set("big", vec![b'y'; (n as usize) << 20])?;
                let got = kv::get("big")?.map_or(0, |v| v.len());
                Ok(got.to_string().into_bytes())
            }
            "burn" => {
                let n = number()?;
                mark(words.next())?;
                burn(Duration::from_millis(n));
                Ok(b"done".to_vec())
            }
            "span" => {
                let n = number()?;
                let start = micros_since_epoch();
                burn(Duration::from_millis(n));
                Ok(format!("{start} {}", micros_since_epoch()).into_bytes())
            }
            "hold" => {
                let key = words
                    .next()
                    .ok_or_else(|| Error::invalid("hold KEY [MARK]"))?;
                mark(words.next())?;
                while !kv::exists(key)? {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(b"done".to_vec())
            }
            "spin" => {
                mark(words.next())?;
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            "memory-bomb" => {
                let pause = Duration::from_millis(number()?);
                mark(words.next())?;
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                loop {
                    // `vec![1; n]` writes every byte: the pages are really used.
                    blocks.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    burn(pause);
                }
            }
            "grow-table" => {
                let delta = i32::try_from(number()?).map_err(|_| Error::invalid("too many"))?;
                let old = grow_table(delta);
                if old < 0 {
                    return Err(Error::other(format!("table.grow by {delta} was refused")));
                }
                Ok(old.to_string().into_bytes())
            }
            "escape" => Ok(escape().into_bytes()),
            "host-loop" => loop {
                std::hint::black_box(config::get("anything"));
            },
            "log-flood" => {
                let n = number()?;
                let line = "x".repeat(1024);
                for _ in 0..n {
                    log::info(&line);
                }
                Ok(n.to_string().into_bytes())
            }
            "log-forge" => {
                let forged = "innocent\n2026-12-05T00:00:00Z ERROR redloom::plugin: plugin=\"victim\" forged";
                log::warn(forged);
                println!("{forged}\u{1b}[2J");
                Ok(b"done".to_vec())
            }
            "fill" => {
                let n = number()?;
                let value = vec![b'f'; 512 << 10];
                for i in 0..n {
                    kv::set(&format!("fill-{i}"), &value)?;
                }
                Ok(n.to_string().into_bytes())
            }
            "write" => {
                let kib = number()? as usize;
                kv::set("write", vec![b'w'; kib << 10])?;
                Ok(b"done".to_vec())
            }
            "publish" => {
                let kib = number()? as usize;
                let channel = words
                    .next()
                    .ok_or_else(|| Error::invalid("publish N CHANNEL"))?;
                let count: u64 = match words.next() {
                    Some(n) => n.parse().map_err(|_| Error::invalid("bad count"))?,
                    None => 1,
                };
                let payload = vec![b'p'; kib << 10];
                let mut receivers = 0u64;
                for _ in 0..count {
                    receivers += u64::from(pubsub::publish(channel, &payload)?);
                }
                Ok(receivers.to_string().into_bytes())
            }
            other => Err(Error::invalid(format!("unknown command `{other}`"))),
        }
    }
}

/// Grows the function table by `delta` null entries; the old size, or -1
/// if the growth was refused.
#[cfg(target_arch = "wasm32")]
fn grow_table(delta: i32) -> i32 {
    unsafe extern "C" {
        /// src/table.ll, linked by build.rs.
        fn hostile_table_grow(delta: i32) -> i32;
    }
    // SAFETY: it only appends null entries to the function table; no
    // existing entry changes.
    unsafe { hostile_table_grow(delta) }
}

/// A native build (`cargo clippy --workspace`) has no table to grow.
#[cfg(not(target_arch = "wasm32"))]
fn grow_table(_delta: i32) -> i32 {
    -1
}

/// Increments the key `mark`, if given.
fn mark(mark: Option<&str>) -> Result<()> {
    if let Some(key) = mark {
        kv::increment(key, 1)?;
    }
    Ok(())
}

/// Runs guest code for `d` by the wall clock.
fn burn(d: Duration) {
    let until = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
}

fn micros_since_epoch() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Recursion the compiler cannot turn into a loop; the stop condition is
/// never met in practice (the stack runs out long before).
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    let next = std::hint::black_box(depth + 1);
    recurse(next).wrapping_add(std::hint::black_box(depth))
}

/// One line per attempt: `fs: error`, `env: 0 vars`, `net: error`.
fn escape() -> String {
    let fs = match std::fs::read("/etc/passwd") {
        Ok(b) => format!("fs: read {} bytes", b.len()),
        Err(_) => "fs: error".to_string(),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(_) => "dir: listed".to_string(),
        Err(_) => "dir: error".to_string(),
    };
    let env = format!("env: {} vars", std::env::vars().count());
    let args = format!("args: {}", std::env::args().count());
    let net = match std::net::TcpStream::connect("127.0.0.1:1") {
        Ok(_) => "net: connected".to_string(),
        Err(_) => "net: error".to_string(),
    };
    [fs, dir, env, args, net].join("\n")
}

impl OnMessage for Hostile {
    fn on_message(_message: pubsub::Message) -> Result<()> {
        burn(Duration::from_secs(1));
        Ok(())
    }
}

redloom_sdk::export!(Hostile => [invoke, message]);
