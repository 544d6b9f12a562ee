"""Text formats of the reference IDT release: the trajectory output and the person bounding-box file.

Trajectory output (what ``DenseTrackStab`` prints): one trajectory per line, every value followed by a tab, the line
ended by a newline (so each line ends with ``"\\t\\n"``). The end frame is an integer (``%d``), columns 2-40 (trajectory
info and shape) have six decimals (``%f``), the descriptors (HOG, HOF, MBHx, MBHy) seven (``%.7f``); this was read off the
release's own output on the KTH clip. Files ending in ``.gz`` are gzip-compressed.

``read_idt_text`` returns float64 so that reading a reference file and writing it back gives the same bytes; our own
float32 rows written and read back agree to the printed precision (and rewriting gives the same bytes again).

Bounding-box file (``--bb_file``): per frame, the frame index (0-based) and its person boxes, 5 numbers each
``x1 y1 x2 y2 score`` in pixels. Assumption (the release documents the fields, not the layout strictly): the writer puts
one frame per line, ``index x1 y1 x2 y2 score x1 y1 ...``, whitespace separated; the reader also accepts a line holding
only the index followed by one line per box. Frames without a line have no boxes.
"""

import gzip
import io
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

import numpy as np

INFO_COLUMNS = 40  # end frame + 9 info values + 30 shape values (L = 15)


# gzip's own default: Python's gzip module defaults to 9, which costs ~4x the time of 6 on IDT text for ~3% smaller files
GZIP_LEVEL = 6


def _open(path: str | Path, mode: str) -> IO[str]:
    path = Path(path)
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="ascii", newline=""))  # text mode: a TextIOWrapper
    return open(path, mode, encoding="ascii", newline="")


@contextmanager
def _open_for_writing(path: Path, gzipped: bool, compresslevel: int) -> Iterator[IO[str]]:
    with open(path, "wb") as raw:
        # no file name and no time in the gzip header: the same rows give the same bytes
        stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) \
            if gzipped else raw
        with io.TextIOWrapper(stream, encoding="ascii", newline="") as f:
            yield f


def format_idt_rows(rows: np.ndarray, info_columns: int = INFO_COLUMNS) -> str:
    """Text of ``rows`` (N, D) in the release's layout (see module docstring); ``info_columns`` = 10 + 2L."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] <= info_columns:
        raise ValueError(f"IDT rows must be (N, D > {info_columns}), got shape {rows.shape}")
    out = io.StringIO()
    n_desc = rows.shape[1] - info_columns
    fmt = "%d\t" + "%f\t" * (info_columns - 1) + "%.7f\t" * n_desc + "\n"
    for row in rows.astype(np.float64):
        vals = row.tolist()
        vals[0] = int(round(vals[0]))
        out.write(fmt % tuple(vals))
    return out.getvalue()


def write_idt_text(path_or_file: str | Path | IO[str], rows: np.ndarray | Iterable[np.ndarray],
                   info_columns: int = INFO_COLUMNS, compresslevel: int = GZIP_LEVEL) -> int:
    """Write ``rows`` ((N, D), or an iterable of such blocks, written as they come) to a path (``.gz`` compresses at
    ``compresslevel``) or an open text file (e.g. ``sys.stdout``); returns the number of rows written.

    A path is written to a temporary file beside it and renamed when complete, so a crash or a bad video never leaves
    a truncated file under the final name."""
    blocks = [rows] if isinstance(rows, np.ndarray) else rows
    if not isinstance(path_or_file, (str, Path)):
        return _write_blocks(path_or_file, blocks, info_columns)
    path = Path(path_or_file)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        gzipped = path.suffix == ".gz"
        with _open_for_writing(tmp, gzipped, compresslevel) as f:
            n = _write_blocks(f, blocks, info_columns, background=gzipped)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _write_blocks(f: IO[str], blocks: Iterable[np.ndarray], info_columns: int, background: bool = False) -> int:
    """Format each block and write it to ``f``. ``background``: formatting and writing (gzip's compression releases
    the GIL) run in one thread beside the extraction that produces the blocks, in order, at most two blocks behind."""
    n = 0
    if not background:
        for block in blocks:
            if len(block):
                f.write(format_idt_rows(block, info_columns))
                n += len(block)
        return n
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="idt-write") as writer:
        for block in blocks:
            if len(block):
                pending.append(writer.submit(lambda b: f.write(format_idt_rows(b, info_columns)), block))
                n += len(block)
                while len(pending) > 2:
                    pending.popleft().result()  # raises the writer's error here
        for done in pending:
            done.result()
    return n


def _read_lines(path_or_file: str | Path | IO[str]) -> tuple[list[str], str]:
    """The lines of a path (``.gz`` allowed) or an open text file, and a name for error messages."""
    if isinstance(path_or_file, (str, Path)):
        with _open(path_or_file, "r") as f:
            return f.read().splitlines(), str(path_or_file)
    return path_or_file.read().splitlines(), getattr(path_or_file, "name", "<stream>")


def _numbers(line: str, name: str, index: int) -> list[float] | None:
    """The numbers of one line (None when blank); ValueError naming the file and line otherwise."""
    fields = line.split()
    if not fields:
        return None
    try:
        return [float(x) for x in fields]
    except ValueError as e:
        raise ValueError(f"{name} line {index + 1}: not a number: {e}") from e


def read_idt_text(path_or_file: str | Path | IO[str], dim: int | None = None) -> np.ndarray:
    """Rows (N, D) float64 of a release-format file (path, ``.gz`` allowed, or open text file); an empty file gives
    (0, dim or 436). Raises ``ValueError`` naming the line when lines differ in length or hold non-numbers."""
    lines, name = _read_lines(path_or_file)
    rows = []
    for i, line in enumerate(lines):
        values = _numbers(line, name, i)
        if values is None:
            continue
        if dim is None:
            dim = len(values)
        if len(values) != dim:
            raise ValueError(f"{name} line {i + 1}: {len(values)} values, expected {dim}")
        rows.append(values)
    return np.array(rows, np.float64).reshape(-1, dim if dim is not None else 436)


def read_boxes(path_or_file: str | Path | IO[str]) -> dict[int, np.ndarray]:
    """Person boxes per frame: {frame index: (K, 5) float32 [x1, y1, x2, y2, score]} from a bb-file."""
    lines, name = _read_lines(path_or_file)
    out: dict[int, list[list[float]]] = {}
    current: int | None = None
    for i, line in enumerate(lines):
        values = _numbers(line, name, i)
        if values is None:
            continue
        if len(values) % 5 == 1:  # "index [boxes...]": starts a frame
            current = int(values[0])
            if current < 0 or current != values[0]:
                raise ValueError(f"{name} line {i + 1}: frame index must be a non-negative integer, got {values[0]}")
            out.setdefault(current, [])
            values = values[1:]
        elif current is None:
            raise ValueError(f"{name} line {i + 1}: box before any frame index: {line!r}")
        if len(values) % 5:
            raise ValueError(f"{name} line {i + 1}: {len(values)} box values, not a multiple of 5")
        out[current].extend(values[k : k + 5] for k in range(0, len(values), 5))
    return {t: np.array(b, np.float32).reshape(-1, 5) for t, b in out.items()}


def write_boxes(path_or_file: str | Path | IO[str], boxes: Mapping[int, np.ndarray] | Iterable[np.ndarray]) -> None:
    """Write per-frame boxes (dict frame -> (K, 5) or a sequence indexed by frame) as one line per frame."""
    items = boxes.items() if isinstance(boxes, Mapping) else enumerate(boxes)
    lines = []
    for t, b in sorted(items, key=lambda kv: kv[0]):
        b = np.asarray(b, np.float64).reshape(-1, 5) if b is not None else np.zeros((0, 5))
        lines.append(" ".join([str(int(t))] + [f"{v:.6f}" for v in b.ravel()]) + "\n")
    text = "".join(lines)
    if isinstance(path_or_file, (str, Path)):
        with _open(path_or_file, "w") as f:
            f.write(text)
    else:
        path_or_file.write(text)
