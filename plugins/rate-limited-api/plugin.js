// rate-limited-api: a tiny API behind a per-client rate limit (the seed's
// rate-limited API), on redloom's `limiter` capability, with what it served
// counted in `kv`.
//
// Input (JSON): {"client": "alice", "path": "/items"}
// Reply (JSON), allowed:
//   {"status": 200, "headers": {"RateLimit-Limit": "5", "RateLimit-Remaining": "4",
//    "RateLimit-Reset": "12"}, "body": {"path": "/items", "served": 17}}
// Reply, over the limit (`refusals`: how often this client was refused, from
// the sorted set `refused` of the most-refused clients):
//   {"status": 429, "headers": {"Retry-After": "12", "RateLimit-Limit": "5",
//    "RateLimit-Remaining": "0", "RateLimit-Reset": "60"}, "refusals": 1}
//
// The limit is a policy in the plugin's manifest entry (any algorithm), by
// default the one named `api`:
//
//   [plugins.rate-limited-api.limiters.api]
//   algorithm = "gcra"
//   rate = "100/min"
//   burst = 20
//
// Setting `policy` names another one.

import { get as setting } from 'redloom:plugin/config@0.2.0';
import { increment } from 'redloom:plugin/kv@0.2.0';
import { check } from 'redloom:plugin/limiter@0.2.0';
import { increment as bump } from 'redloom:plugin/sorted-set@0.2.0';
import { log } from 'redloom:plugin/log@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Clients and paths become part of Redis keys; the host refuses keys over
// 1024 bytes, these caps give a clearer error first.
const MAX_CLIENT = 256;
const MAX_PATH = 512;

/** A handler error the host reports as `invalid-argument`. */
function invalid(message) {
  return { tag: 'invalid-argument', val: message };
}

/** Milliseconds (a BigInt) as whole seconds, rounded up, for HTTP headers. */
function seconds(ms) {
  return String((ms + 999n) / 1000n);
}

/** The "API" behind the limit: counts what it served, per path. */
function serve(path) {
  const served = increment(`served:${path}`, 1n);
  return { path, served: Number(served) };
}

function handle(input) {
  let request;
  try {
    request = JSON.parse(decoder.decode(input));
  } catch (e) {
    throw invalid(`input is not JSON: ${e}`);
  }
  const client = request?.client;
  const path = request?.path ?? '/';
  if (typeof client !== 'string' || client.length === 0 || client.length > MAX_CLIENT) {
    throw invalid(`"client" must be a string of 1 to ${MAX_CLIENT} characters`);
  }
  if (typeof path !== 'string' || path.length > MAX_PATH) {
    throw invalid(`"path" must be a string of at most ${MAX_PATH} characters`);
  }
  const policy = setting('policy') ?? 'api';

  // One atomic EVALSHA in Redis; a failure throws, with the WIT error as
  // `payload`, and becomes this invocation's error.
  const d = check(policy, client, 1n);
  const headers = {
    'RateLimit-Limit': String(d.limit),
    'RateLimit-Remaining': String(d.remaining),
    'RateLimit-Reset': seconds(d.resetAfterMs),
  };
  let reply;
  if (d.allowed) {
    reply = { status: 200, headers, body: serve(path) };
  } else {
    log('info', `client ${client} is over the \`${policy}\` limit of ${d.limit}`);
    // The most-refused clients, in a sorted set (`sorted-set` from JS).
    const refusals = bump('refused', client, 1);
    reply = {
      status: 429,
      headers: { 'Retry-After': seconds(d.retryAfterMs), ...headers },
      refusals,
    };
  }
  return encoder.encode(JSON.stringify(reply));
}

/** The `redloom:plugin/invoke` export. */
export const invoke = { handle };
