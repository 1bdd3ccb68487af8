"""Whether a child is already as desired, so that its server-side apply can be skipped.

A server-side apply of an unchanged object changes nothing, but it still costs the API server a full
PATCH (decode, merge, managed fields, admission); a reconcile runs on every event of every child, so
those no-op applies were most of what the operator asked of it. A GET is far cheaper. The apply is
skipped only when both hold:

* the live object has every field of the desired manifest with the same value (:func:`covers`): a
  field someone else changed or removed is drift, and is applied back, as before, on the next
  reconcile of any kind (an event of the child itself, the poll, the resync) — not only at a resync;
* the live object carries the hash of this very manifest (:data:`APPLIED_HASH`), stamped on each
  apply: the last manifest applied was this one, so no field we applied before and no longer want is
  left to remove (dropping a field from the manifest is how server-side apply removes it, which a
  comparison of what we want cannot see).

Anything the comparison cannot match, such as a value the API server normalises ("1000m" for "1") or
a field a typed client model drops, counts as different: the cost of a miss is one no-op apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubediffusion.operator.parts import Manifest, digest

APPLIED_HASH = "kubediffusion.io/applied-hash"


def stamped(desired: Mapping[str, Any]) -> Manifest:
    """``desired`` with the hash of itself in an annotation (what is applied)."""
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: digest(desired)}
    return {**desired, "metadata": meta}


def up_to_date(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether applying ``stamped(desired)`` over ``live`` would change nothing."""
    if live is None:
        return False
    return covers(live, stamped(desired))


def covers(live: object, want: object) -> bool:
    """Every field of ``want`` is in ``live`` with the same value; lists match item by item, same length."""
    if isinstance(want, Mapping):
        return isinstance(live, Mapping) and all(k in live and covers(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(covers, live, want))
    return type(live) is type(want) and live == want
