"""product-cache: cache-aside in front of a slow product catalogue.

Input (JSON): {"product": "42"} looks a product up; {"product": "42",
"invalidate": true} drops its cached copy.

Reply (JSON): {"product": "42", "source": "cache" | "origin", "filled": bool,
"value": {...}} or {"product": "42", "invalidated": bool}.

On a miss the plugin takes a short fill lease (`set` if-absent with a TTL),
loads the product from the origin, and only the lease holder writes the value
back with its TTL: concurrent misses for one product all answer, but only one
of them fills the cache. Settings: `ttl-ms` (default 30000), `lease-ms`
(default 5000).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, kv, log
from wit_world.imports import hash as hashes
from wit_world.imports.kv import SetCondition, SetOptions
from wit_world.imports.types import Error_InvalidArgument

# Product ids become part of Redis key names; the host refuses keys over
# 1024 bytes, this cap gives a clearer error first.
MAX_ID = 256


def invalid(message: str) -> Err:
    """A handler error the host reports as `invalid-argument`."""
    return Err(Error_InvalidArgument(message))


def positive_setting(name: str, default: int) -> int:
    raw = config.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"setting `{name}` must be a positive integer, got {raw!r}")
    if value < 1:
        raise invalid(f"setting `{name}` must be a positive integer, got {raw!r}")
    return value


def load_from_origin(product: str) -> dict:
    """The slow source of truth (here: computed; counted in `origin-loads`, and
    per product in the hash `loads-by-product`)."""
    kv.increment("origin-loads", 1)
    # Loads per product, in one hash (`hash` from Python).
    hashes.increment("loads-by-product", product, 1)
    digest = sum(ord(c) * (i + 1) for i, c in enumerate(product))
    return {
        "id": product,
        "name": f"Product {product}",
        "price_cents": 100 + digest % 9900,
        "in_stock": digest % 3 != 0,
    }


def lookup(product: str) -> dict:
    key = f"product:{product}"
    cached = kv.get(key)
    if cached is not None:
        return {"product": product, "source": "cache", "filled": False, "value": json.loads(cached)}

    ttl_ms = positive_setting("ttl-ms", 30_000)
    lease_ms = positive_setting("lease-ms", 5_000)
    lease = f"lease:{product}"
    holds_lease = kv.set(lease, b"1", SetOptions(ttl_ms=lease_ms, condition=SetCondition.IF_ABSENT))
    value = load_from_origin(product)
    if holds_lease:
        kv.set(key, json.dumps(value).encode(), SetOptions(ttl_ms=ttl_ms, condition=SetCondition.ALWAYS))
        kv.delete(lease)
    else:
        log.log(log.Level.DEBUG, f"product {product}: another invocation is filling the cache")
    return {"product": product, "source": "origin", "filled": holds_lease, "value": value}


class Invoke(exports.Invoke):
    def handle(self, input: bytes) -> bytes:
        try:
            request = json.loads(input)
        except ValueError as e:
            raise invalid(f"input is not JSON: {e}")
        product = request.get("product") if isinstance(request, dict) else None
        if not isinstance(product, str) or not 0 < len(product) <= MAX_ID:
            raise invalid(f'"product" must be a string of 1 to {MAX_ID} characters')
        if request.get("invalidate"):
            reply = {"product": product, "invalidated": kv.delete(f"product:{product}")}
        else:
            reply = lookup(product)
        return json.dumps(reply).encode()
