// rate-limited-api: a tiny API behind a per-client fixed-window rate limit,
// kept in Redis through redloom's `kv` capability.
//
// Input (JSON): {"client": "alice", "path": "/items"}
// Reply (JSON), allowed: {"allowed": true, "status": 200, "limit": 5,
//   "remaining": 4, "body": {"path": "/items", "served": 17}}
// Reply, over the limit: {"allowed": false, "status": 429, "limit": 5,
//   "remaining": 0, "retry_after_ms": 60000}
//
// Settings: `limit` (requests per window, default 5), `window-ms` (default
// 60000).

import { get as setting } from 'redloom:plugin/config@0.1.0';
import { increment, set, expire } from 'redloom:plugin/kv@0.1.0';
import { log } from 'redloom:plugin/log@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Keys become part of Redis key names; the host refuses keys over 1024 bytes,
// these caps give a clearer error first.
const MAX_CLIENT = 256;
const MAX_PATH = 512;

/** A positive integer setting, or `fallback` when it is not set. */
function positiveSetting(name, fallback) {
  const raw = setting(name);
  if (raw === undefined || raw === null) return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw invalid(`setting \`${name}\` must be a positive integer, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/** A handler error the host reports as `invalid-argument`. */
function invalid(message) {
  return { tag: 'invalid-argument', val: message };
}

/**
 * Counts one request in the client's current window and returns the count.
 *
 * The window starts with the client's first request and lasts `windowMs`.
 * `set(..., if-absent)` opens it with its time to live in one atomic command,
 * so a window key never lives without a TTL; the increment then keeps that
 * TTL. If the window expired between the two calls, the increment created a
 * fresh key without a TTL, which `expire` fixes.
 */
function countRequest(key, windowMs) {
  const opened = set(key, encoder.encode('0'), { ttlMs: BigInt(windowMs), condition: 'if-absent' });
  const count = increment(key, 1n);
  if (!opened && count === 1n) {
    expire(key, BigInt(windowMs));
  }
  return Number(count);
}

/** The "API" behind the limiter: counts what it served, per path. */
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
  const limit = positiveSetting('limit', 5);
  const windowMs = positiveSetting('window-ms', 60000);

  const count = countRequest(`window:${client}`, windowMs);
  const remaining = Math.max(0, limit - count);
  let reply;
  if (count <= limit) {
    reply = { allowed: true, status: 200, limit, remaining, body: serve(path) };
  } else {
    log('info', `rate limit: client ${client} over ${limit} requests per ${windowMs} ms`);
    reply = { allowed: false, status: 429, limit, remaining, retry_after_ms: windowMs };
  }
  return encoder.encode(JSON.stringify(reply));
}

/** The `redloom:plugin/invoke` export. */
export const invoke = { handle };
