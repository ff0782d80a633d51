// hit-counter: counts hits per counter name in Redis, through redloom's `kv`
// capability, from C.
//
// Input: a counter name (1 to 128 characters of A-Z a-z 0-9 - _ . / :).
// Reply (JSON): {"counter": "home", "hits": 3, "rank": 1}: `rank` is the
// counter's place among all counters by hits ever (a sorted set).
//
// Settings: `step` (how much one hit adds, default 1) and `ttl-ms` (when set,
// the counter expires that long after its first hit: hits per period).

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "invoke_plugin.h"

#define MAX_NAME 128

typedef redloom_plugin_types_error_t error_t_;

// Fills `err` with `invalid-argument(message)`; the bindings free it.
static bool invalid(error_t_ *err, const char *message) {
  err->tag = REDLOOM_PLUGIN_TYPES_ERROR_INVALID_ARGUMENT;
  invoke_plugin_string_dup(&err->val.invalid_argument, message);
  return false;
}

static bool valid_name(const uint8_t *s, size_t len) {
  if (len == 0 || len > MAX_NAME) return false;
  for (size_t i = 0; i < len; i++) {
    uint8_t c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '/' || c == ':';
    if (!ok) return false;
  }
  return true;
}

// The integer setting `name`, `fallback` when unset; false (and `err` set)
// when it is not a positive integer.
static bool positive_setting(const char *name, long long fallback, long long *out, error_t_ *err) {
  invoke_plugin_string_t key, value;
  invoke_plugin_string_set(&key, name);
  if (!redloom_plugin_config_get(&key, &value)) {
    *out = fallback;
    return true;
  }
  char buf[32] = {0};
  size_t n = value.len < sizeof buf - 1 ? value.len : sizeof buf - 1;
  memcpy(buf, value.ptr, n);
  invoke_plugin_string_free(&value);
  char *end = NULL;
  long long v = strtoll(buf, &end, 10);
  if (n == 0 || *end != '\0' || v < 1) {
    char message[96];
    snprintf(message, sizeof message, "setting `%s` must be a positive integer", name);
    return invalid(err, message);
  }
  *out = v;
  return true;
}

bool exports_redloom_plugin_invoke_handle(invoke_plugin_list_u8_t *input, invoke_plugin_list_u8_t *ret,
                                          error_t_ *err) {
  bool ok = false;
  char name[MAX_NAME + 1];
  long long step, ttl_ms;

  if (!valid_name(input->ptr, input->len)) {
    invalid(err, "the input must be a counter name: 1 to 128 of A-Z a-z 0-9 - _ . / :");
    goto done;
  }
  memcpy(name, input->ptr, input->len);
  name[input->len] = '\0';
  if (!positive_setting("step", 1, &step, err) || !positive_setting("ttl-ms", 0, &ttl_ms, err)) {
    goto done;
  }

  char key_buf[sizeof "hits:" + MAX_NAME];
  snprintf(key_buf, sizeof key_buf, "hits:%s", name);
  invoke_plugin_string_t key;
  invoke_plugin_string_set(&key, key_buf);

  int64_t hits;
  if (!redloom_plugin_kv_increment(&key, step, &hits, err)) goto done;
  // The first hit of a period starts its time to live.
  if (ttl_ms > 0 && hits == step) {
    bool exists;
    if (!redloom_plugin_kv_expire(&key, (uint64_t)ttl_ms, &exists, err)) goto done;
  }

  // Every counter on one board, busiest first: `sorted-set` from C.
  invoke_plugin_string_t board, member;
  invoke_plugin_string_set(&board, "hits:board");
  invoke_plugin_string_set(&member, name);
  double total;
  if (!redloom_plugin_sorted_set_increment(&board, &member, (double)step, &total, err)) goto done;
  invoke_plugin_option_u64_t place;
  if (!redloom_plugin_sorted_set_rank(&board, &member, true, &place, err)) goto done;
  long long rank = place.is_some ? (long long)place.val + 1 : 0;

  char message[64 + MAX_NAME];
  snprintf(message, sizeof message, "counter %s: %lld hits", name, (long long)hits);
  invoke_plugin_string_t log_message;
  invoke_plugin_string_set(&log_message, message);
  redloom_plugin_log_log(REDLOOM_PLUGIN_LOG_LEVEL_DEBUG, &log_message);

  // Names are restricted to characters that need no escaping in JSON.
  char reply[64 + MAX_NAME];
  int len = snprintf(reply, sizeof reply, "{\"counter\":\"%s\",\"hits\":%lld,\"rank\":%lld}", name,
                     (long long)hits, rank);
  ret->ptr = malloc((size_t)len);  // freed by the bindings after the host copied it
  if (ret->ptr == NULL) abort();
  memcpy(ret->ptr, reply, (size_t)len);
  ret->len = (size_t)len;
  ok = true;

done:
  // The input is the plugin's to free.
  if (input->len > 0) free(input->ptr);  // an empty list has no allocation
  return ok;
}
