"""{{name}}: a redloom plugin.

Input: a name. Reply: `<greeting>, <name> (#<n>)`, where `n` counts how often
that name was greeted (in Redis, through the `kv` capability) and the greeting
is the `greeting` setting (default `hello`).

The bindings (`wit_world`) are generated from wit/ at build time; run
`componentize-py -d wit -w invoke-plugin bindings .bindings` to read them. A
capability call that fails raises `componentize_py_types.Err` whose `value`
is the WIT `error`; raising `Err(Error_...(...))` from `handle` returns it to
the host as the handler's error.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, kv, log
from wit_world.imports.types import Error_InvalidArgument

# Names become part of Redis keys; the host refuses keys over 1024 bytes.
MAX_NAME = 256


class Invoke(exports.Invoke):
    def handle(self, input: bytes) -> bytes:
        try:
            name = input.decode().strip()
        except UnicodeDecodeError:
            raise Err(Error_InvalidArgument("the input must be UTF-8"))
        if not 0 < len(name) <= MAX_NAME:
            raise Err(Error_InvalidArgument(f"the input must be a name of 1 to {MAX_NAME} characters"))
        greeting = config.get("greeting") or "hello"
        n = kv.increment(f"greeted:{name}", 1)
        log.log(log.Level.INFO, f"greeting {name} for the {n}. time")
        return f"{greeting}, {name} (#{n})".encode()
