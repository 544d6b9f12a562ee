"""Ingest's stat cache: each file's content fingerprint, remembered with the file's stat, so that a rerun over 235k
unchanged files stats them all and reads none.

The stat is (size, mtime_ns, ctime_ns, inode). A user can set mtime back (``touch -d``, ``os.utime``, ``rsync -t``) but
not ctime: any write, chmod, rename or utime moves it to the current time. So a file whose stat is the remembered one
has not been written since its fingerprint was taken, and a file whose stat changed is read again (2 MiB, or all of it
with ``full_hash``); a ``touch`` thus costs one read and, the content being equal, reruns nothing downstream.

Entries whose ctime was within ``RACY_SECONDS`` of the moment they were statted are not remembered: a write in the same
timestamp tick (coarse on some file systems: 1 s on NFS from some servers, 2 s on FAT) could leave the stat unchanged;
such a file is simply read again next time.

Stored as ``cache/<name>-stats/<chunk>.json`` (path -> [stat, fingerprint], per chunk of the current chunking, so a
touch rewrites one small file); each file is written atomically, and deleting the folder only costs one re-read. Each
user keeps its own folder (``name``): ingest's sources (``ingest``), and the files imported instead of computing, the
IDT text files (``idt-text-idt``, ``idt-text-encode``: the sample reads a subset) and the bb-files (``detect-bb``).
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from idtprior.storage.fingerprint import file_fingerprint
from idtprior.storage.workspace import Workspace

RACY_SECONDS = 2.0
CACHE_FOLDER = "cache"


def stats_folder(ws: Workspace, name: str) -> str:
    """Where the stat cache called ``name`` keeps its chunk files."""
    return ws.path(CACHE_FOLDER, f"{name}-stats")


def stat_key(st: os.stat_result) -> str:
    """``"<size>-<mtime_ns>-<ctime_ns>-<inode>"``: changes whenever the file is written, even with mtime set back."""
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}"


class StatCache:
    """Content fingerprints of source files, read only where a file's stat changed since the last time.

    >>> cache = StatCache(ws, full_hash=False)
    >>> fps = cache.fingerprints({"/videos/a.mp4": "0001-of-0004"})   # path -> chunk
    >>> cache.save()                                                   # remember what was read (not in dry runs)
    """

    def __init__(self, ws: Workspace, full_hash: bool = False, workers: int = 8, name: str = "ingest"):
        self.ws = ws
        self.mode = "sha256" if full_hash else "edges"
        self.workers = workers
        self.reads = 0  # files read by ``fingerprints`` (0 on a rerun over unchanged files)
        self._folder = stats_folder(ws, name)
        self._stored: dict[str, dict] = {}  # chunk -> its file's entries as stored (other modes: {})
        self._known: dict[str, list] = {}  # path -> [stat, fingerprint] from every stored chunk file of this mode
        self._fresh: dict[str, dict] = {}  # chunk -> entries to store now
        if ws.fs.exists(self._folder):
            for p in ws.fs.ls(self._folder, detail=False):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                if not name.endswith(".json"):
                    continue
                try:
                    data = json.loads(ws.read_bytes(p) or b"{}")
                    files = data["files"] if data.get("mode") == self.mode else {}
                except (ValueError, KeyError, TypeError):
                    files = {}  # unreadable: those files are read again
                self._stored[name[: -len(".json")]] = files
                self._known.update(files)

    def fingerprints(self, files: dict[str, str]) -> dict[str, str]:
        """``files``: path -> chunk. Returns path -> content fingerprint; ``"missing"`` for a file that does not
        exist, ``"unreadable-<error>-<stat>"`` for one that cannot be read (the stage's probe then says why)."""
        out: dict[str, str] = {}
        todo: list[tuple[str, str, os.stat_result]] = []
        for path, chunk in files.items():
            fresh = self._fresh.setdefault(chunk, {})
            try:
                st = os.stat(path)
            except OSError:
                out[path] = "missing"
                continue
            hit = self._known.get(path)
            if hit is not None and hit[0] == stat_key(st):
                out[path] = hit[1]
                fresh[path] = hit
            else:
                todo.append((path, chunk, st))
        if todo:
            with ThreadPoolExecutor(min(self.workers, len(todo))) as pool:  # I/O bound; hashlib releases the GIL
                for (path, chunk, st), fp in zip(todo, pool.map(self._read, todo)):
                    out[path] = fp
                    racy = time.time_ns() - st.st_ctime_ns < RACY_SECONDS * 1e9
                    if not fp.startswith("unreadable-") and not racy:
                        self._fresh[chunk][path] = [stat_key(st), fp]
        self.reads += len(todo)
        return out

    def _read(self, item: tuple[str, str, os.stat_result]) -> str:
        path, _, st = item
        try:
            return file_fingerprint(path, full=self.mode == "sha256")
        except OSError as e:  # no permission, vanished since the stat: the probe records the error
            return f"unreadable-{type(e).__name__}-{stat_key(st)}"

    def save(self) -> int:
        """Store what ``fingerprints`` saw: rewrite the chunk files whose entries changed, remove those of chunks no
        longer listed. Returns the number of files written (0 on a rerun over unchanged files)."""
        written = 0
        for chunk, entries in sorted(self._fresh.items()):
            if self._stored.get(chunk) != entries:
                blob = json.dumps({"mode": self.mode, "files": entries}, sort_keys=True).encode()
                self.ws.write_bytes_atomic(f"{self._folder}/{chunk}.json", blob)
                written += 1
        for chunk in set(self._stored) - set(self._fresh):
            self.ws.fs.rm(f"{self._folder}/{chunk}.json")
        self._stored = {**{c: e for c, e in self._stored.items() if c in self._fresh}, **self._fresh}
        return written
