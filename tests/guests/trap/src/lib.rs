//! Test guest: fails in each way a plugin can, on request, so the host's
//! containment, quotas and instance reuse can be tested.
//!
//! | input | what happens |
//! |---|---|
//! | `panic` | `panic!("deliberate panic")` — the instance traps |
//! | `unreachable` | a wasm `unreachable` instruction — the instance traps |
//! | `error` | returns `Err(Error::Other("deliberate error"))` |
//! | `spin` | loops forever (for wall-time / CPU quotas) |
//! | `alloc` | allocates 1 MiB blocks without end (for the memory quota) |
//! | `count` | returns how many invocations this instance has served, this one included, as decimal text |
//! | anything else | returns the input unchanged |

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use redloom_sdk::{Error, Invoke, Result};

/// Invocations served by this instance: linear memory lives as long as the
/// instance, so this tells a reused instance from a fresh one.
static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Trap;

impl Invoke for Trap {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let served = INVOCATIONS.fetch_add(1, Ordering::Relaxed) + 1;
        match input.as_slice() {
            b"panic" => panic!("deliberate panic"),
            b"unreachable" => unreachable_instruction(),
            b"error" => Err(Error::other("deliberate error")),
            b"spin" => spin(),
            b"alloc" => alloc_forever(),
            b"count" => Ok(served.to_string().into_bytes()),
            _ => Ok(input),
        }
    }
}

/// Executes wasm's `unreachable` instruction (a trap without a panic message).
#[cfg(target_arch = "wasm32")]
fn unreachable_instruction() -> ! {
    core::arch::wasm32::unreachable()
}

/// Natively there is no wasm instruction; abort is the closest thing.
#[cfg(not(target_arch = "wasm32"))]
fn unreachable_instruction() -> ! {
    std::process::abort()
}

/// Busy-loops until the host interrupts the instance.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Grows linear memory until the host's memory cap stops it (allocation
/// failure aborts, which traps).
fn alloc_forever() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(black_box(vec![1u8; 1 << 20]));
        black_box(&blocks);
    }
}

redloom_sdk::export!(Trap => [invoke]);
