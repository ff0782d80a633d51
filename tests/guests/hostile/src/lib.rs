//! Test guest: a plugin that misbehaves on request, to prove the host
//! contains it. The input is a command word and an optional number.
//!
//! | input | what it does |
//! |---|---|
//! | `flood` | `kv::increment("flood")` until a call fails; returns the count |
//! | `yield-loop` | calls `kv::get` forever, ignoring every error |
//! | `recurse` | recurses without end (stack overflow) |
//! | `huge-output N` | returns N MiB of output |
//! | `big-reply N` | stores an N MiB value, then reads it back |
//! | `burn N` | runs guest code for N milliseconds (by the wall clock), then returns `done` |
//! | `escape` | tries the filesystem, the environment and the network; reports what it got |

use std::time::{Duration, Instant};

use redloom_sdk::{Error, Invoke, Result, kv};

struct Hostile;

impl Invoke for Hostile {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let input = String::from_utf8(input)?;
        let mut words = input.split_whitespace();
        let command = words.next().unwrap_or("");
        let n: u64 = words
            .next()
            .map(str::parse)
            .transpose()
            .map_err(|_| Error::invalid("bad number"))?
            .unwrap_or(1);
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
            "huge-output" => Ok(vec![b'x'; (n as usize) << 20]),
            "big-reply" => {
                kv::set("big", vec![b'y'; (n as usize) << 20])?;
                let got = kv::get("big")?.map_or(0, |v| v.len());
                Ok(got.to_string().into_bytes())
            }
            "burn" => {
                let until = Instant::now() + Duration::from_millis(n);
                let mut x = 0u64;
                while Instant::now() < until {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                Ok(b"done".to_vec())
            }
            "escape" => Ok(escape().into_bytes()),
            other => Err(Error::invalid(format!("unknown command `{other}`"))),
        }
    }
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

redloom_sdk::export!(Hostile => [invoke]);
