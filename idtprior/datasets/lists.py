"""Readers for the ways video collections are listed: a folder, Kinetics CSV, UCF101 / HMDB51 split files, path lists.

Each reader returns ``VideoEntry`` rows with a sanitised id (safe as one path component: no id can write outside the
workspace), the absolute source path, and the label and split when the list says them.
"""

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from idtprior.storage.fingerprint import sanitize_id

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
_UCF_SPLIT = re.compile(r"^(train|test)list(\d+)\.txt$", re.IGNORECASE)
_HMDB_SPLIT = re.compile(r"^(.+)_test_split(\d+)\.txt$", re.IGNORECASE)


@dataclass(frozen=True)
class VideoEntry:
    video_id: str
    path: str
    label: str = ""
    split: str = ""


class ListFormatError(ValueError):
    """A list file that cannot be read; the message names the file, the line and the value."""


def detect_format(source: Path) -> str:
    if source.is_dir():
        if any(_HMDB_SPLIT.match(p.name) for p in source.glob("*_test_split*.txt")):
            return "hmdb_split"
        return "folder"
    if _UCF_SPLIT.match(source.name):
        return "ucf_split"
    if _HMDB_SPLIT.match(source.name):
        return "hmdb_split"
    if source.suffix.lower() == ".csv":
        with open(source, newline="") as f:
            header = next(csv.reader(f), [])
        if {"youtube_id", "time_start", "time_end"} <= {h.strip() for h in header}:
            return "kinetics_csv"
    return "path_list"


def read_source(source: str | Path, fmt: str = "auto", video_root: str | Path | None = None,
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoEntry]:
    """Entries listed by ``source`` in format ``fmt`` (``auto`` guesses from the name and header).

    Relative paths in list files resolve against ``video_root`` (default: the list file's folder). Ids that collide
    after sanitising get a numeric suffix, in sorted path order, so they stay stable.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ListFormatError(f"video source {source} does not exist")
    fmt = detect_format(source) if fmt == "auto" else fmt
    root = Path(video_root).expanduser() if video_root else (source if source.is_dir() else source.parent)
    readers = {"folder": _read_folder, "kinetics_csv": _read_kinetics, "ucf_split": _read_ucf,
               "hmdb_split": _read_hmdb, "path_list": _read_path_list}
    if fmt not in readers:
        raise ListFormatError(f"video source {source}: unknown format {fmt!r}; known: {sorted(readers)}")
    if fmt == "folder":
        if not source.is_dir():
            raise ListFormatError(f"video source {source}: format 'folder' needs a directory")
        entries = _read_folder(source, extensions)
    else:
        entries = readers[fmt](source, root)
    return _unique_ids(entries)


def _unique_ids(entries: list[tuple[str, str, str, str]]) -> list[VideoEntry]:
    seen: dict[str, int] = {}
    out = []
    for raw_id, path, label, split in sorted(entries, key=lambda e: (e[0], e[1])):
        vid = sanitize_id(raw_id)
        if vid in seen:
            seen[vid] += 1
            vid = f"{vid}-{seen[vid]}"
        else:
            seen[vid] = 0
        out.append(VideoEntry(vid, path, label, split))
    return out


def _read_folder(folder: Path, extensions) -> list:
    exts = {e.lower() for e in extensions}
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and p.suffix.lower() in exts and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.with_suffix("").as_posix(), str(p.resolve()), "", ""))
    return out


def _read_kinetics(path: Path, root: Path) -> list:
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if missing:
            raise ListFormatError(f"Kinetics list {path}: missing column(s) {sorted(missing)}; "
                                  f"header is {reader.fieldnames}")
        index = KineticsIndex(root)
        for lineno, row in enumerate(reader, start=2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError as e:
                raise ListFormatError(f"Kinetics list {path} line {lineno}: bad time_start/time_end "
                                      f"{row['time_start']!r}/{row['time_end']!r}") from e
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            label = row["label"].strip()
            split = (row.get("split") or "").strip()
            out.append((stem, index.find(label, stem), label, split))
    return out


class KineticsIndex:
    """The entries of a Kinetics video root down to ``root/*/*/``, listed once; every CSV row resolves from them.

    Kinetics copies come as ``root/<label>/<stem>.mp4``, ``root/<split>/<label>/...`` or flat ``root/<stem>.mp4``.
    Probing each row's candidates and globbing ``root/*/*/`` when they miss cost one walk of the tree per video (235k
    walks for Kinetics-400 in the split layout); this lists each folder of the two-level tree once instead.

    Args:
        root: the video root; a missing or unreadable folder lists as empty.
        scandir: the directory lister (default ``os.scandir``; tests count its calls).
    """

    def __init__(self, root: Path, scandir: Callable | None = None) -> None:
        self.root = root
        self._scandir = scandir or os.scandir
        self.names: dict[tuple[str, ...], set[str]] = {}  # folder (parts below root) -> names that exist in it
        self.real: dict[tuple[str, ...], Path] = {}  # folder -> its resolved path (a realpath per folder, not per row)
        self.links: dict[tuple[str, ...], set[str]] = {}  # folder -> names that are links (resolved one by one)
        self.deep: dict[str, tuple[str, str, str]] = {}  # stem -> smallest (dir, subdir, name) matching */*/stem.*
        for d1 in self._list(())[1]:
            for d2 in self._list((d1,))[1]:
                for name in self._list((d1, d2))[0]:
                    # name matches ``<stem>.*`` for every stem that ends right before one of its dots
                    i = name.find(".")
                    while i >= 0:
                        if name[:i] not in self.deep or (d1, d2, name) < self.deep[name[:i]]:
                            self.deep[name[:i]] = (d1, d2, name)
                        i = name.find(".", i + 1)

    def _list(self, rel: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """List ``root/rel`` once; record in ``names`` the entries that exist (a dangling link does not, as for
        ``Path.exists``). Returns every entry name (``glob`` yields dangling links too) and the sorted sub-folders
        (links to folders included, as ``glob`` follows them)."""
        every, existing, dirs, links = [], set(), [], set()
        try:
            with self._scandir(self.root.joinpath(*rel)) as it:
                for entry in it:
                    every.append(entry.name)
                    if entry.is_symlink():
                        links.add(entry.name)
                        if not os.path.exists(entry.path):
                            continue
                    existing.add(entry.name)
                    if entry.is_dir():
                        dirs.append(entry.name)
        except OSError:  # a missing root, a file, no permission: nothing there, as for exists() and glob
            pass
        self.names[rel] = existing
        self.links[rel] = links
        self.real[rel] = Path(os.path.realpath(self.root.joinpath(*rel)))
        return every, sorted(dirs)

    def _resolved(self, rel: tuple[str, ...], name: str) -> str:
        """``str((root / rel / name).resolve())`` without a stat per path component (only links need one)."""
        if name in self.links.get(rel, ()):
            return str(self.root.joinpath(*rel, name).resolve())
        return str(self.real[rel] / name)

    def find(self, label: str, stem: str) -> str:
        """The video of one CSV row: ``root/<label>/``, ``root/<label with _ for spaces>/``, ``root/`` in
        ``VIDEO_EXTENSIONS`` order, then the first ``root/*/*/<stem>.*`` in sorted path order; else the path it would
        have, ``root/<label>/<stem>.mp4`` (reported missing later, by the probe)."""
        if "/" in stem or any(Path(f).is_absolute() or ".." in Path(f).parts or len(Path(f).parts) > 2
                              for f in (label, label.replace(" ", "_"))):
            return _probe_kinetics_file(self.root, label, stem)  # reaches outside the listed tree (no real list does)
        for folder in (label, label.replace(" ", "_"), ""):
            rel = Path(folder).parts
            names = self.names.get(rel, set())
            for ext in VIDEO_EXTENSIONS:
                if f"{stem}{ext}" in names:
                    return self._resolved(rel, f"{stem}{ext}")
        deep = self.deep.get(stem)
        return self._resolved(deep[:2], deep[2]) if deep else str(self.root / label / f"{stem}.mp4")


def _probe_kinetics_file(root: Path, label: str, stem: str) -> str:
    """``KineticsIndex.find`` by probing the disk: for a label or id that leads outside ``root/*/*/``."""
    for folder in (root / label, root / label.replace(" ", "_"), root):
        for ext in VIDEO_EXTENSIONS:
            if (folder / f"{stem}{ext}").exists():
                return str((folder / f"{stem}{ext}").resolve())
    hits = sorted(root.glob(f"*/*/{stem}.*"))
    return str(hits[0].resolve()) if hits else str(root / label / f"{stem}.mp4")


def _read_ucf(path: Path, root: Path) -> list:
    """UCF101 ``trainlistNN.txt`` (``Class/v_Class_gGG_cCC.avi IDX``) or ``testlistNN.txt`` (no index).

    The sibling list of the same split number is read too, so one file names the whole labelled set.
    """
    m = _UCF_SPLIT.match(path.name)
    number = m.group(2) if m else "01"
    files = [path.parent / f"trainlist{number}.txt", path.parent / f"testlist{number}.txt"] if m else [path]
    out = []
    for list_file in files:
        if not list_file.exists():
            continue
        split = "test" if list_file.name.lower().startswith("test") else "train"
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            parts = line.strip().split()
            if not parts:
                continue
            rel = parts[0]
            if "/" not in rel:
                raise ListFormatError(f"UCF101 list {list_file} line {lineno}: expected Class/file, got {rel!r}")
            label = rel.split("/")[0]
            out.append((Path(rel).stem, str((root / rel).resolve()), label, split))
    return out


def _read_hmdb(source: Path, root: Path) -> list:
    """HMDB51 ``<class>_test_split<N>.txt`` files: ``video.avi 1`` (train), ``2`` (test), ``0`` (unused, skipped).

    ``source`` is one such file or the folder holding them (split 1 of every class).
    """
    files = [source] if source.is_file() else sorted(source.glob("*_test_split1.txt"))
    video_root = root if root != source else source
    out = []
    for list_file in files:
        label = _HMDB_SPLIT.match(list_file.name).group(1)
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            parts = line.strip().split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ListFormatError(f"HMDB51 list {list_file} line {lineno}: expected 'video.avi 0|1|2', got "
                                      f"{line.strip()!r}")
            if parts[1] == "0":
                continue
            split = "train" if parts[1] == "1" else "test"
            out.append((Path(parts[0]).stem, str((video_root / label / parts[0]).resolve()), label, split))
    return out


def _read_path_list(path: Path, root: Path) -> list:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else root / p
        out.append((Path(line).with_suffix("").as_posix(), str(p.resolve()), "", ""))
    return out


def read_labels(path: str | Path) -> dict[str, tuple[str, str]]:
    """A labels CSV with columns ``video_id,label[,split]`` -> {sanitised id: (label, split)}."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video_id" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ListFormatError(f"labels file {path}: needs columns video_id,label[,split]; header is "
                                  f"{reader.fieldnames}")
        return {sanitize_id(r["video_id"]): (r["label"], r.get("split") or "") for r in reader}
