// Test guest (JavaScript): behaves as asked, so the host's quotas and
// instance reuse can be tested against a SpiderMonkey component.
//
// | input   | what happens |
// |---------|--------------|
// | spin    | loops forever (wall-time / CPU quotas) |
// | count   | how many invocations this instance served, this one included |
// | error   | throws the WIT error `other("deliberate error")` |
// | bug     | throws a TypeError, which `guarded` (as in the JS template) makes `other` |
// | bad-key | calls kv.get with a key over the host's limit and replies with what was thrown |
// | other   | replies with the input |

import { get } from 'redloom:plugin/kv@0.2.0';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// Lives as long as the instance: tells a reused instance from a fresh one.
let served = 0;

function handle(input) {
  served += 1;
  switch (decoder.decode(input)) {
    case 'spin': {
      let n = 0;
      for (;;) n = (n + 1) | 0;
    }
    case 'count':
      return encoder.encode(String(served));
    case 'error':
      throw { tag: 'other', val: 'deliberate error' };
    case 'bug':
      return null.length;
    case 'bad-key':
      try {
        get('k'.repeat(2000));
        return encoder.encode('no error');
      } catch (e) {
        return encoder.encode(JSON.stringify({ payload: e.payload ?? null, message: String(e) }));
      }
    default:
      return input;
  }
}

/**
 * The JS template's wrapper (host/templates/js/plugin.js), copied:
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

export const invoke = { handle: guarded(handle) };
