"""Test guest (Python): behaves as asked, so the host's quotas and instance
reuse can be tested against a CPython component.

| input   | what happens |
|---------|--------------|
| spin    | loops forever (wall-time / CPU quotas) |
| count   | how many invocations this instance served, this one included |
| error   | raises the WIT error `other("deliberate error")` |
| bad-key | calls kv.get with a key over the host's limit and replies with what was raised |
| other   | replies with the input |
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv
from wit_world.imports.types import Error_Other

# Lives as long as the instance: tells a reused instance from a fresh one.
served = 0


class Invoke(exports.Invoke):
    def handle(self, input: bytes) -> bytes:
        global served
        served += 1
        op = input.decode(errors="replace")
        if op == "spin":
            n = 0
            while True:
                n = (n + 1) & 0xFFFF
        if op == "count":
            return str(served).encode()
        if op == "error":
            raise Err(Error_Other("deliberate error"))
        if op == "bad-key":
            try:
                kv.get("k" * 2000)
                return b"no error"
            except Err as e:
                return json.dumps({"type": type(e.value).__name__, "value": str(e.value.value)}).encode()
        return input
