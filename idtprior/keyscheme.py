"""The two key schemes: today's (behaviour versions) and the legacy one (source text), for the upgrade.

Keys made before behaviour versions held each stage's source-text fingerprint where they now hold
``<stage>/v<version>``; they hashed settings now left out (``detect.device``, ``detect.batch_size``, the Mask R-CNN
weights' path, now keyed by content) and keyed training and evaluation on ``decode.time_chunk``. A stage planned under
``legacy_keys()`` computes the key its chunks had then, from the source fingerprints pinned at the switch
(``behaviour_pins.json``: ``legacy_code``) and the upstream records' keys of then (``upstream_key``); a record whose
key is that legacy key was computed by the code at the switch, and the flow re-keys it in place instead of recomputing
it (``flows.common.rekey_legacy``, ``flows.registry.upgrade_keys``).

No import of the package here: the config module and the flows both read it.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_LEGACY: ContextVar[bool] = ContextVar("idtprior_legacy_keys", default=False)

LEGACY_KEYED: dict[str, frozenset[str]] = {"DetectConfig": frozenset({"device", "batch_size", "maskrcnn_weights"})}
"""Settings (per config section class) that legacy keys hashed and today's keys leave out."""


UPGRADED = ("cache", "keys-upgraded.json")
"""A workspace file, written once no record made before behaviour versions is left in it (``flows.stages.
upgrade_keys``): later runs skip the upgrade's planning. Deleting it only makes the next run look again."""


@contextmanager
def legacy_keys() -> Iterator[None]:
    """Plan under the legacy scheme while inside (this thread or task only)."""
    token = _LEGACY.set(True)
    try:
        yield
    finally:
        _LEGACY.reset(token)


def legacy() -> bool:
    """True while planning under the legacy scheme."""
    return _LEGACY.get()


def upstream_key(record) -> str:
    """The key of an upstream record as a downstream key holds it: its key now, or under the legacy scheme the key it
    had before it was re-keyed (``rekeyed_from``)."""
    if legacy():
        return getattr(record, "rekeyed_from", "") or record.fingerprint
    return record.content_key  # its key, and what retries of its failed videos changed (``--retry-failed``)


def upstream_train_key(info: dict, fallback: str) -> str:
    """A trained network's train fingerprint (``record.videos["model"]``) as downstream keys hold it."""
    if legacy() and info.get("legacy_train_fingerprint"):
        return info["legacy_train_fingerprint"]
    return info.get("train_fingerprint", fallback)
