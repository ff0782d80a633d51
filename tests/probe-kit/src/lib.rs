//! The runner the probe guests (`tests/guests/*-probe`) share.
//!
//! A probe's input is a JSON array of operations (objects with an `op`
//! field); its output is a JSON array with one result per operation:
//! `{"ok": value}`, `{"err": {"kind", "message"}}` for a capability error,
//! or `{"err": {"kind": "bad-op", …}}` for a malformed operation. The test
//! harness's `probe`, `ok` and `err_kind` read that shape.

use std::time::Duration;

use redloom_sdk::{Error, Result};
use serde_json::{Value, json};

/// Why an operation produced no value.
pub enum Step {
    /// The capability returned an error.
    Failed(Error),
    /// The operation itself is malformed.
    Bad(String),
}

impl From<Error> for Step {
    fn from(e: Error) -> Self {
        Step::Failed(e)
    }
}

/// Runs the program in `input` with `run` for each operation, threading
/// `state` (handles the program holds between operations) through them.
/// The state is dropped before the reply is encoded, so handles still held
/// are dropped (released) while the invocation runs.
pub fn run_program<S>(
    input: &[u8],
    mut state: S,
    mut run: impl FnMut(&Value, &mut S) -> std::result::Result<Value, Step>,
) -> Result<Vec<u8>> {
    let ops: Value = serde_json::from_slice(input)
        .map_err(|e| Error::invalid(format!("input is not JSON: {e}")))?;
    let Value::Array(ops) = ops else {
        return Err(Error::invalid("input must be a JSON array of operations"));
    };
    let results: Vec<Value> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match run(op, &mut state) {
            Ok(value) => json!({ "ok": value }),
            Err(Step::Failed(e)) => json!({ "err": { "kind": e.kind(), "message": e.message() } }),
            Err(Step::Bad(m)) => {
                json!({ "err": { "kind": "bad-op", "message": format!("operation {i}: {m}") } })
            }
        })
        .collect();
    drop(state);
    serde_json::to_vec(&results).map_err(|e| Error::other(format!("encoding results: {e}")))
}

/// Typed access to an operation's fields; errors name the field.
pub struct Fields<'a>(pub &'a Value);

impl<'a> Fields<'a> {
    pub fn str(&self, name: &str) -> std::result::Result<&'a str, Step> {
        self.0[name]
            .as_str()
            .ok_or_else(|| Step::Bad(format!("`{name}` must be a string")))
    }

    pub fn u64(&self, name: &str) -> std::result::Result<u64, Step> {
        self.0[name]
            .as_u64()
            .ok_or_else(|| Step::Bad(format!("`{name}` must be a non-negative integer")))
    }

    pub fn opt_u64(&self, name: &str) -> std::result::Result<Option<u64>, Step> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.u64(name).map(Some),
        }
    }

    pub fn ms(&self, name: &str) -> std::result::Result<Duration, Step> {
        self.u64(name).map(Duration::from_millis)
    }
}
