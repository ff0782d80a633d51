// Test guest (JavaScript): behaves as asked, so the host's quotas and
// instance reuse can be tested against a SpiderMonkey component.
//
// | input   | what happens |
// |---------|--------------|
// | spin    | loops forever (wall-time / CPU quotas) |
// | count   | how many invocations this instance served, this one included |
// | error   | throws the WIT error `other("deliberate error")` |
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

export const invoke = { handle };
