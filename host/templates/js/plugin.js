// {{name}}: a redloom plugin.
//
// Input: a name. Reply: `<greeting>, <name> (#<n>)`, where `n` counts how
// often that name was greeted (in Redis, through the `kv` capability) and the
// greeting is the `greeting` setting (default `hello`).
//
// WIT types in JavaScript: list<u8> is a Uint8Array, s64/u64 are BigInts,
// option<T> is T or undefined, an enum is its case name as a string, a
// variant is {tag, val}. A capability call that fails throws an error whose
// `payload` is the WIT `error` ({tag: 'timeout', val: '...'}, ...); throwing
// such a variant from `handle` returns it to the host as the handler's error.

import { get as setting } from 'redloom:plugin/config@0.2.0';
import { increment } from 'redloom:plugin/kv@0.2.0';
import { log } from 'redloom:plugin/log@0.2.0';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// Names become part of Redis keys; the host refuses keys over 1024 bytes.
const MAX_NAME = 256;

function handle(input) {
  const name = decoder.decode(input).trim();
  if (name.length === 0 || name.length > MAX_NAME) {
    throw { tag: 'invalid-argument', val: `the input must be a name of 1 to ${MAX_NAME} characters` };
  }
  const greeting = setting('greeting') ?? 'hello';
  const n = increment(`greeted:${name}`, 1n);
  log('info', `greeting ${name} for the ${n}. time`);
  return encoder.encode(`${greeting}, ${name} (#${n})`);
}

/**
 * `handler` with every exception it throws made a WIT `error`: a WIT error
 * variant ({tag, val}) or a capability's error (its `payload`) as it is,
 * anything else (a bug: a TypeError, a thrown string) as `other` with its
 * message, so the host reports what went wrong instead of a bare trap.
 */
function guarded(handler) {
  return (...args) => {
    try {
      return handler(...args);
    } catch (e) {
      if (e !== null && typeof e === 'object' && 'tag' in e) throw e;
      if (e?.payload !== undefined) throw e.payload;
      const what = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      throw { tag: 'other', val: `uncaught exception: ${what}` };
    }
  };
}

// The `redloom:plugin/invoke` handler.
export const invoke = { handle: guarded(handle) };
