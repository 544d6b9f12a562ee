"""Content fingerprints, stable chunk keys and safe video ids."""

import hashlib
import json
import re
from pathlib import Path

MIB = 1 << 20
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_ID_LENGTH = 160


def file_fingerprint(path: str | Path, full: bool = False) -> str:
    """The content fingerprint of a file.

    Default ``"<size>-<sha256 of the first and last MiB>"``: reads at most 2 MiB, and changes when a file is replaced,
    re-encoded, truncated or extended; it cannot see a same-size change that lies wholly inside the middle of a file
    over 2 MiB (bytes edited in place). ``full``: ``"<size>-sha256-<sha256 of every byte>"``, which sees any change.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if full:
            while block := f.read(8 * MIB):
                h.update(block)
            return f"{size}-sha256-{h.hexdigest()[:24]}"
        h.update(f.read(MIB))
        if size > 2 * MIB:
            f.seek(size - MIB)
            h.update(f.read(MIB))
        elif size > MIB:
            h.update(f.read())
    return f"{size}-{h.hexdigest()[:24]}"


def hash_json(obj) -> str:
    """A stable short hash of a JSON-serialisable value (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def chunk_of(video_id: str, num_chunks: int) -> str:
    """The chunk a video belongs to: ``sha1(id) mod num_chunks``, named ``"0012-of-0064"``.

    Keyed by the id, not by list position, so adding or removing a video changes exactly one chunk.
    """
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be at least 1, got {num_chunks}")
    bucket = int(hashlib.sha1(video_id.encode()).hexdigest()[:12], 16) % num_chunks
    return f"{bucket:04d}-of-{num_chunks:04d}"


def sanitize_id(raw: str) -> str:
    """A video id that is safe as a single path component and as a Zarr node name.

    Path separators become ``__``, any other character outside ``[A-Za-z0-9._-]`` becomes ``_`` (NUL bytes and the
    surrogate escapes of non-UTF-8 bytes too), leading dots are dropped (no ``..``, no hidden names), and over-long ids
    are cut and suffixed with a hash so they stay unique.
    """
    parts = [p for p in re.split(r"[\\/]+", raw) if p not in ("", ".", "..")]
    text = "__".join(_SAFE.sub("_", p) for p in parts).lstrip(".")
    # any str hashes, the surrogate escapes of a name that was not UTF-8 and NUL bytes included
    digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    if not text:
        text = "video_" + digest
    if len(text) > MAX_ID_LENGTH:
        text = text[: MAX_ID_LENGTH - 11] + "_" + digest
    return text
