// {{name}}: a redloom plugin.
//
// Input: a name. Reply: `<greeting>, <name> (#<n>)`, where `n` counts how
// often that name was greeted (in Redis, through the `kv` capability) and the
// greeting is the `greeting` setting (default `hello`).
//
// The bindings (`invoke_plugin.h`) are generated from wit/ at build time into
// target/c-plugin/. Memory rules of wit-bindgen's C bindings: the handler owns
// `input` and frees it; `ret` and error strings must be malloc'ed (the bindings
// free them after the host has copied them); strings a capability returns are
// the plugin's to free (`invoke_plugin_string_free`).

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "invoke_plugin.h"

// Names become part of Redis keys; the host refuses keys over 1024 bytes.
#define MAX_NAME 256

static bool invalid(redloom_plugin_types_error_t *err, const char *message) {
  err->tag = REDLOOM_PLUGIN_TYPES_ERROR_INVALID_ARGUMENT;
  invoke_plugin_string_dup(&err->val.invalid_argument, message);
  return false;
}

bool exports_redloom_plugin_invoke_handle(invoke_plugin_list_u8_t *input, invoke_plugin_list_u8_t *ret,
                                          redloom_plugin_types_error_t *err) {
  bool ok = false;
  invoke_plugin_string_t greeting = {0};
  bool has_greeting = false;
  if (input->len == 0 || input->len > MAX_NAME) {
    invalid(err, "the input must be a name of 1 to 256 bytes");
    goto done;
  }
  int name_len = (int)input->len;
  const char *name = (const char *)input->ptr;

  invoke_plugin_string_t setting;
  invoke_plugin_string_set(&setting, "greeting");
  has_greeting = redloom_plugin_config_get(&setting, &greeting);

  char key_buf[16 + MAX_NAME];
  snprintf(key_buf, sizeof key_buf, "greeted:%.*s", name_len, name);
  invoke_plugin_string_t key;
  invoke_plugin_string_set(&key, key_buf);
  int64_t n;
  if (!redloom_plugin_kv_increment(&key, 1, &n, err)) goto done;

  char message[64 + MAX_NAME];
  snprintf(message, sizeof message, "greeting %.*s for the %lld. time", name_len, name, (long long)n);
  invoke_plugin_string_t log_message;
  invoke_plugin_string_set(&log_message, message);
  redloom_plugin_log_log(REDLOOM_PLUGIN_LOG_LEVEL_INFO, &log_message);

  const char *hello = has_greeting ? (const char *)greeting.ptr : "hello";
  int hello_len = has_greeting ? (int)greeting.len : 5;
  int len = snprintf(NULL, 0, "%.*s, %.*s (#%lld)", hello_len, hello, name_len, name, (long long)n);
  ret->ptr = malloc((size_t)len + 1);
  if (ret->ptr == NULL) abort();
  snprintf((char *)ret->ptr, (size_t)len + 1, "%.*s, %.*s (#%lld)", hello_len, hello, name_len, name,
           (long long)n);
  ret->len = (size_t)len;
  ok = true;

done:
  if (has_greeting) invoke_plugin_string_free(&greeting);
  if (input->len > 0) free(input->ptr);  // an empty list has no allocation
  return ok;
}
