"""Workspace storage: manifest, Zarr stores per stage, atomic per-chunk commits, fingerprints."""

from idtprior.storage.fingerprint import chunk_of, file_fingerprint, hash_json, sanitize_id
from idtprior.storage.frames import FrameStore, read_clip, write_frames
from idtprior.storage.manifest import (STATUS_DUPLICATE, STATUS_FAILED, STATUS_OK, STATUS_RETRYABLE, ManifestRow,
                                       read_manifest, write_manifest)
from idtprior.storage.statcache import StatCache
from idtprior.storage.workspace import ChunkRecord, Workspace, chunk_count

__all__ = [
    "ChunkRecord", "FrameStore", "ManifestRow", "STATUS_DUPLICATE", "STATUS_FAILED", "STATUS_OK", "STATUS_RETRYABLE",
    "StatCache",
    "Workspace", "chunk_count", "chunk_of", "file_fingerprint", "hash_json", "read_clip", "read_manifest",
    "sanitize_id", "write_frames", "write_manifest",
]
