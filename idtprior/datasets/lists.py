"""Readers for the ways video collections are listed: a folder, Kinetics CSV, UCF101 / HMDB51 split files, path lists.

Each reader returns ``VideoEntry`` rows with a sanitised id (safe as one path component: no id can write outside the
workspace), the absolute source path, and the label and split when the list says them.

Bad input never stops a listing (``list_source``): every line ends as an entry or as a ``SkippedLine`` with its reason.
A line naming something that cannot be a video file (a NUL byte, bytes that are not UTF-8, a dangling or looping
symlink, a path outside ``allowed_roots``) is an entry with an ``error``: ingest records it as a failed manifest row,
its path escaped to printable text. Only a list that cannot be read at all (no such file, a missing CSV column, a line
that breaks the format) raises ``ListFormatError``, one message naming the file and the line.
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
    error: str = ""  # why the listed file cannot be probed (ingest records a failed row); "" for a usable entry


@dataclass(frozen=True)
class SkippedLine:
    """A line (or a folder) of the source that named no video, and why: ``blank``, ``comment``, or another reason."""

    where: str  # "<list file> line <n>" or "folder <path>"
    reason: str

    @property
    def ignorable(self) -> bool:
        """A blank or comment line: counted in the stage's report, not listed one by one."""
        return self.reason in ("blank line", "comment")


@dataclass(frozen=True)
class SourceListing:
    entries: list[VideoEntry]
    skipped: list[SkippedLine]


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
        with open(source, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            header = next(csv.reader(f), [])
        if {"youtube_id", "time_start", "time_end"} <= {h.strip() for h in header}:
            return "kinetics_csv"
    return "path_list"


def read_source(source: str | Path, fmt: str = "auto", video_root: str | Path | None = None,
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoEntry]:
    """Entries listed by ``source`` in format ``fmt`` (``auto`` guesses from the name and header): the entries of
    ``list_source`` (its skipped lines dropped)."""
    return list_source(source, fmt, video_root, extensions).entries


def list_source(source: str | Path, fmt: str = "auto", video_root: str | Path | None = None,
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
                allowed_roots: tuple[str, ...] | list[str] | None = None) -> SourceListing:
    """Entries listed by ``source`` in format ``fmt`` (``auto`` guesses from the name and header), and the lines that
    named no video, with their reasons.

    Relative paths in list files resolve against ``video_root`` (default: the list file's folder). Ids that collide
    after sanitising get a numeric suffix, in sorted path order, so they stay stable. ``allowed_roots``: folders every
    video must lie in once resolved (symlinks followed); an entry outside is kept with an ``error`` (None: anywhere).
    """
    source = Path(source).expanduser()
    try:
        exists, is_dir = source.exists(), source.is_dir()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ListFormatError(f"video source {printable(str(source), 300)}: cannot be read: {detail}") from e
    if not exists:
        raise ListFormatError(f"video source {printable(str(source), 300)} does not exist")
    fmt = detect_format(source) if fmt == "auto" else fmt
    root = Path(video_root).expanduser() if video_root else (source if is_dir else source.parent)
    readers = {"folder": _read_folder, "kinetics_csv": _read_kinetics, "ucf_split": _read_ucf,
               "hmdb_split": _read_hmdb, "path_list": _read_path_list}
    if fmt not in readers:
        raise ListFormatError(f"video source {source}: unknown format {fmt!r}; known: {sorted(readers)}")
    skipped: list[SkippedLine] = []
    if fmt == "folder":
        if not is_dir:
            raise ListFormatError(f"video source {source}: format 'folder' needs a directory")
        entries = _read_folder(source, extensions, skipped)
    else:
        try:
            entries = readers[fmt](source, root, skipped)
        except OSError as e:  # a list file that cannot be read (no permission, a folder where a file should be)
            raise ListFormatError(f"video source {source}: cannot be read: {e}") from e
    roots = [os.path.realpath(os.path.expanduser(r)) for r in allowed_roots] if allowed_roots is not None else None
    return SourceListing(_unique_ids([_vetted(e, roots) for e in entries]), skipped)


def printable(text: str, limit: int = 0) -> str:
    """``text`` safe to show and to store as UTF-8: bytes that were not UTF-8 (surrogate escapes) and control
    characters (NUL among them) as backslash escapes; cut to ``limit`` characters (0: whole) with ``...`` between."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no decoding produced
        raw = text.encode("utf-8", "surrogatepass")
    out = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", raw.decode("utf-8", "backslashreplace"))
    if limit and len(out) > limit:
        out = f"{out[: limit // 2]}...{out[-(limit // 2):]}"
    return out


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _vetted(entry: tuple, roots: list[str] | None) -> tuple:
    """The reader's ``(raw_id, path, label, split[, error])`` with an error for what cannot be a usable video: a NUL
    byte or non-UTF-8 bytes anywhere in the row (fields escaped so the manifest can hold them), a path outside
    ``roots``."""
    raw_id, path, label, split, *rest = entry
    error = rest[0] if rest else ""
    if not error:
        if any("\x00" in f for f in (path, label, split)):
            error = "its name as listed holds a NUL byte (shown as \\x00), which no file name can"
        elif not all(_utf8(f) for f in (path, label, split)):
            error = ("its name or label holds bytes that are not UTF-8 (shown as \\xNN): re-encode the list as UTF-8, "
                     "or rename the file")
    if error:
        return raw_id, printable(path), printable(label), printable(split), error
    if roots is not None and not within_roots(path, roots):
        real = os.path.realpath(path)
        shown = f" (resolves to {real})" if real != path else ""
        error = f"{path}{shown} is outside ingest.allowed_roots {roots}"
    return raw_id, path, label, split, error


def within_roots(path: str | Path, roots: list[str] | tuple[str, ...]) -> bool:
    """Whether ``path``, resolved (symlinks followed, ``..`` collapsed), lies in one of the folders ``roots``
    (themselves resolved)."""
    real = os.path.realpath(os.path.expanduser(path))
    for root in roots:
        root = os.path.realpath(os.path.expanduser(root))
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _unique_ids(entries: list[tuple[str, str, str, str, str]]) -> list[VideoEntry]:
    seen: dict[str, int] = {}
    out = []
    for raw_id, path, label, split, error in sorted(entries, key=lambda e: (e[0], e[1])):
        vid = sanitize_id(raw_id)
        if vid in seen:
            seen[vid] += 1
            vid = f"{vid}-{seen[vid]}"
        else:
            seen[vid] = 0
        out.append(VideoEntry(vid, path, label, split, error))
    return out


def _text_lines(path: Path) -> list[str]:
    """The lines of a text list: UTF-8 (a BOM dropped), bytes that are not UTF-8 kept as surrogate escapes (the entry
    that holds them is then refused, naming them), split on newlines only (a name may hold any other character)."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def _without_suffix(name: str) -> str:
    """``name`` without its extension, as a raw id (``/``, ``..``: as given; ``sanitize_id`` makes any of them safe)."""
    try:
        return Path(name).with_suffix("").as_posix()
    except ValueError:
        return name


def _resolved(path: Path) -> tuple[str, str]:
    """``(str(path.resolve()), "")``; for a dangling or looping symlink (or one that cannot be resolved) the path as
    given, absolute, and why it names no file."""
    try:
        resolved = str(path.resolve())
    except (OSError, RuntimeError, ValueError) as e:
        return os.path.abspath(path), f"cannot be resolved: {e}"
    if resolved != str(path) and os.path.islink(path) and not os.path.exists(resolved):
        try:
            target = printable(os.readlink(path))
        except OSError as e:
            target = f"? ({e})"
        return os.path.abspath(path), f"dangling symlink to {target}, which does not exist"
    return resolved, ""


def _read_folder(folder: Path, extensions, skipped: list[SkippedLine]) -> list:
    """Every file with a video extension under ``folder`` (hidden files and folders left out, links to folders not
    followed, as ``rglob``), dangling and looping links and non-regular files included: the probe or the entry's
    error says why each cannot be used. A sub-folder that cannot be listed is a skipped line, not a silent loss."""
    exts = {e.lower() for e in extensions}
    out = []

    def unlisted(e: OSError) -> None:
        skipped.append(SkippedLine(f"folder {printable(str(e.filename))}", f"cannot be listed: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in exts:
                continue
            p = Path(dirpath) / name
            rel = p.relative_to(folder).with_suffix("").as_posix()
            path, error = _resolved(p)  # a dangling or looping link: the link, with the error
            out.append((rel, path, "", "", error))
    return out


def _read_kinetics(path: Path, root: Path, skipped: list[SkippedLine]) -> list:
    out = []
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if missing:
            raise ListFormatError(f"Kinetics list {path}: missing column(s) {sorted(missing)}; "
                                  f"header is {reader.fieldnames}")
        index = KineticsIndex(root)
        for row in reader:
            lineno = reader.line_num
            where = f"{path} line {lineno}"
            if (row["label"] or "").lstrip().startswith("#"):
                skipped.append(SkippedLine(where, "comment"))
                continue
            if row["time_start"] is None or row["time_end"] is None:
                given = [v for k, v in row.items() if k is not None and v is not None]
                raise ListFormatError(f"Kinetics list {where}: {len(given)} of the header's {len(reader.fieldnames)} "
                                      f"fields: {printable(str(given), 200)}")
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError as e:
                raise ListFormatError(f"Kinetics list {where}: bad time_start/time_end "
                                      f"{row['time_start']!r}/{row['time_end']!r}") from e
            youtube_id = (row["youtube_id"] or "").strip()
            if not youtube_id:
                skipped.append(SkippedLine(where, "no youtube_id"))
                continue
            stem = f"{youtube_id}_{start:06d}_{end:06d}"
            label = row["label"].strip()
            split = (row.get("split") or "").strip()
            if not all(_utf8(t) and "\x00" not in t for t in (stem, label)):  # the index is not searched for it
                out.append((stem, str(root / label / f"{stem}.mp4"), label, split))
                continue
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


def _read_ucf(path: Path, root: Path, skipped: list[SkippedLine]) -> list:
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
        for lineno, line in enumerate(_text_lines(list_file), start=1):
            parts = line.strip().split()
            if _blank_or_comment(parts, f"{list_file} line {lineno}", skipped):
                continue
            rel = parts[0]
            if "/" not in rel:
                raise ListFormatError(f"UCF101 list {list_file} line {lineno}: expected Class/file, got "
                                      f"{printable(rel, 200)!r}")
            label = rel.split("/")[0]
            resolved, error = _resolved(root / rel)
            out.append((Path(rel).stem, resolved, label, split, error))
    return out


def _blank_or_comment(parts: list[str], where: str, skipped: list[SkippedLine]) -> bool:
    """Whether a line (split in ``parts``) is blank or a ``#`` comment; if so it is recorded as skipped."""
    if parts and not parts[0].startswith("#"):
        return False
    skipped.append(SkippedLine(where, "comment" if parts else "blank line"))
    return True


def _read_hmdb(source: Path, root: Path, skipped: list[SkippedLine]) -> list:
    """HMDB51 ``<class>_test_split<N>.txt`` files: ``video.avi 1`` (train), ``2`` (test), ``0`` (unused, skipped).

    ``source`` is one such file or the folder holding them (split 1 of every class).
    """
    files = [source] if source.is_file() else sorted(source.glob("*_test_split1.txt"))
    video_root = root if root != source else source
    out = []
    for list_file in files:
        label = _HMDB_SPLIT.match(list_file.name).group(1)
        for lineno, line in enumerate(_text_lines(list_file), start=1):
            parts = line.strip().split()
            if _blank_or_comment(parts, f"{list_file} line {lineno}", skipped):
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ListFormatError(f"HMDB51 list {list_file} line {lineno}: expected 'video.avi 0|1|2', got "
                                      f"{printable(line.strip(), 200)!r}")
            if parts[1] == "0":
                continue
            split = "train" if parts[1] == "1" else "test"
            resolved, error = _resolved(video_root / label / parts[0])
            out.append((Path(parts[0]).stem, resolved, label, split, error))
    return out


def _read_path_list(path: Path, root: Path, skipped: list[SkippedLine]) -> list:
    """One path a line (absolute, or relative to ``root``); blank lines and ``#`` comments are skipped."""
    out = []
    for lineno, line in enumerate(_text_lines(path), start=1):
        line = line.strip()
        if _blank_or_comment(line.split(maxsplit=1), f"{path} line {lineno}", skipped):
            continue
        if "\x00" in line:  # no file can be named so (``_vetted`` refuses it); Path.resolve would raise
            out.append((_without_suffix(line), line, "", ""))
            continue
        p = Path(line).expanduser()
        resolved, error = _resolved(p if p.is_absolute() else root / p)
        out.append((_without_suffix(line), resolved, "", "", error))
    return out


def read_labels(path: str | Path) -> dict[str, tuple[str, str]]:
    """A labels CSV with columns ``video_id,label[,split]`` -> {sanitised id: (label, split)}."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig", errors="backslashreplace") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video_id" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ListFormatError(f"labels file {path}: needs columns video_id,label[,split]; header is "
                                  f"{reader.fieldnames}")
        return {sanitize_id(r["video_id"]): (r["label"], r.get("split") or "") for r in reader}
