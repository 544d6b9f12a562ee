"""Golden outputs of every stage's algorithm core on tiny fixed inputs, and their declared behaviour version.

A stage's cache key holds its behaviour version (``idtprior.runtime.codeprint.behaviour_version``), not its source text:
an edit that changes what a stage computes must bump that version, and one that does not may keep it. The goldens are
how that promise is checked: ``compute(stage)`` runs the stage's core (what its chunk task calls, never the Prefect
flow) on a fixture small enough for a CPU test, and ``tests/golden/test_goldens.py`` compares it with
``data/<stage>.npz``, written by ``write(stage)`` together with the version it was computed under. A result that moves
beyond ``TOLERANCES`` is a behaviour change: raise the stage's ``BEHAVIOUR`` version in its task module, then::

    python -m idtprior.runtime.pins bump STAGE          # pins the version; runs `goldens.py write STAGE`

Each ``compute`` returns ``{name: array}``; integer, boolean and string arrays must match exactly, float arrays within
the stage's tolerance. Where a core's full output would make the file large (IDT rows, PCA components, clips), the
golden keeps the parts that stay small (row counts, the trajectories' geometry columns) and seeded random projections
of the rest: any change of the projected values beyond rounding moves the projection.

Fixtures: the KTH clip and its reference IDT output (``../shared/data/kth``, or ``$IDTPRIOR_SHARED_DATA``; stages that
need them raise ``FixtureMissing``, which the tests turn into a skip), small videos written here, seeded arrays.
"""

import contextlib
import gzip
import io
import itertools
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # run as a script: idtprior_testutils lives in tests/
    sys.path.insert(0, str(TESTS_DIR))

from idtprior_testutils import moving_square_frames  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parent / "data"
SHARED_DATA = Path(os.environ.get("IDTPRIOR_SHARED_DATA", TESTS_DIR.parent / ".." / "shared" / "data")).resolve()
KTH_VIDEO = SHARED_DATA / "kth" / "person01_boxing_d1_uncomp.avi"
KTH_IDT_TEXT = SHARED_DATA / "kth" / "person01_boxing_d1.idt.txt.gz"
VERSION_KEY = "__version__"

GOLDEN_STAGES: tuple[str, ...] = ("ingest", "decode", "decode@jpeg", "detect", "idt", "idt@torch", "fit_codebook",
                                  "encode", "encode@torch", "cluster", "pretrain", "evaluate")

# float arrays: |golden - computed| <= atol + rtol * |golden|; integer, boolean and string arrays: equal.
TOLERANCES: dict[str, dict[str, float]] = {
    # container facts: rational arithmetic of the container's time base, printed through float64
    "ingest": dict(rtol=1e-9, atol=0.0),
    # uint8 frames, exact: decoding is lossless, and OpenCV's resizes (and libjpeg-turbo's codec) give the same bytes
    # wherever the same build runs
    "decode": dict(rtol=0.0, atol=0.0),
    "decode@jpeg": dict(rtol=0.0, atol=0.0),
    # cv2.dnn's float32 convolutions pick their kernels by CPU (AVX2 / AVX-512): ~1e-5 relative on the scores, and a
    # box corner is a score-weighted decode of anchors, 1e-3 px of slack is far below any real change
    "detect": dict(rtol=1e-4, atol=1e-3),
    # float32 rows through compiled kernels built with -ffp-contract=off and OpenCV's fixed-point resizes: rounding
    # differs only where OpenCV's SIMD paths do; the projections sum 426 such values
    "idt": dict(rtol=1e-5, atol=1e-5),
    # torch's CPU convolutions and reductions sum in an order that depends on the ISA: float32 rounding, measured at
    # up to 4e-7 relative with ATen forced to its baseline kernels
    "idt@torch": dict(rtol=1e-4, atol=1e-5),
    # float32 EM: BLAS products sum in a kernel-dependent order, and over 15 iterations that rounding grows to ~1e-6
    # in the means and ~3e-5 in the log variances (measured with OpenBLAS forced to other kernels); variances are kept
    # as logarithms, so a floored one of 1e-7 counts as much as a broad one
    "fit_codebook": dict(rtol=1e-4, atol=1e-4),
    # float32 posteriors and projections (BLAS), float64 statistics: up to 9e-7 on unit vectors (other OpenBLAS kernels)
    "encode": dict(rtol=1e-5, atol=1e-5),
    # and the torch extractor's rows (see idt@torch): up to 3e-6
    "encode@torch": dict(rtol=1e-4, atol=5e-5),
    # float32 centroid sums; labels exact
    "cluster": dict(rtol=1e-5, atol=1e-6),
    # one SGD step of a 3D ResNet: oneDNN / ATen CPU kernels differ by ISA in float32 summation order (measured: up to
    # 6e-6 of an array's scale with both forced to their baseline kernels)
    "pretrain": dict(rtol=1e-4, atol=1e-5),
    # the tiny network's features as pretrain's; L-BFGS stops at a gradient tolerance, where BLAS rounding may move the
    # point it stops at
    "evaluate": dict(rtol=1e-4, atol=1e-5),
}


class FixtureMissing(RuntimeError):
    """A golden's input data (``../shared/data``) is not on this machine."""


def golden_file(stage: str) -> Path:
    """``data/<stage>.npz``, ``@`` spelled ``_at_`` (``decode@jpeg`` -> ``decode_at_jpeg.npz``)."""
    _check_stage(stage)
    return GOLDEN_DIR / f"{stage.replace('@', '_at_')}.npz"


def _check_stage(stage: str) -> None:
    if stage not in GOLDEN_STAGES:
        raise KeyError(f"no golden for stage {stage!r}; known: {list(GOLDEN_STAGES)}")


def stage_version(stage: str) -> int:
    """The behaviour version the stage declares now (``codeprint.behaviour_version``)."""
    from idtprior.runtime.codeprint import behaviour_version

    return behaviour_version(stage)


def compute(stage: str) -> dict[str, np.ndarray]:
    """The stage's golden arrays, computed now (``{name: array}``; see the module docstring)."""
    _check_stage(stage)
    with single_threaded():
        out = _COMPUTE[stage]()
    return {name: np.asarray(value) for name, value in out.items()}


def load(stage: str) -> tuple[dict[str, np.ndarray], int]:
    """The stored golden arrays of ``stage`` and the behaviour version they were written under."""
    with np.load(golden_file(stage), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    return {k: v for k, v in arrays.items() if k != VERSION_KEY}, int(arrays[VERSION_KEY])


def write(stage: str, force: bool = False) -> bool:
    """Compute the stage's golden and store it with the stage's current behaviour version; True when the file was
    (re)written.

    A golden that the computation still matches within tolerance, under the same version, is kept as it is (unless
    ``force``): the pin file holds each golden's digest (``idtprior.runtime.pins``), and a rewrite on a machine whose
    float rounding differs would move the digest without any change of behaviour."""
    arrays = compute(stage)
    if VERSION_KEY in arrays:
        raise ValueError(f"{stage}: {VERSION_KEY!r} is reserved for the behaviour version")
    version = stage_version(stage)
    path = golden_file(stage)
    if path.exists() and not force:
        golden, stored_version = load(stage)
        if stored_version == version and not mismatches(stage, golden, arrays):
            return False
    _save_npz(path, {**arrays, VERSION_KEY: np.array(version, np.int64)})
    return True


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``, byte for byte the same for the same arrays: entries in name order with a fixed
    timestamp (numpy's own stamps the time of writing), written to a temporary file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def mismatches(stage: str, golden: dict[str, np.ndarray], computed: dict[str, np.ndarray]) -> list[str]:
    """What differs between a stored and a computed golden beyond the stage's tolerance, one line per array (empty:
    they agree)."""
    tol = TOLERANCES[stage]
    problems = []
    for name in sorted(set(golden) | set(computed)):
        if name not in computed or name not in golden:
            problems.append(f"{name}: {'not computed' if name not in computed else 'not in the golden'}")
            continue
        want, got = golden[name], computed[name]
        if want.shape != got.shape:
            problems.append(f"{name}: shape {got.shape}, golden {want.shape}")
            continue
        if want.dtype.kind == "f" or got.dtype.kind == "f":
            bad = ~np.isclose(got.astype(np.float64), want.astype(np.float64), rtol=tol["rtol"], atol=tol["atol"],
                              equal_nan=True)
            if bad.any():
                worst = np.abs(got.astype(np.float64) - want.astype(np.float64))[bad].max()
                problems.append(f"{name}: {int(bad.sum())} of {want.size} values beyond rtol={tol['rtol']} "
                                f"atol={tol['atol']} (largest difference {worst:.3g})")
        elif not np.array_equal(want, got):
            problems.append(f"{name}: {int(np.sum(want != got))} of {want.size} values differ (exact)")
    return problems


# --- fixtures -------------------------------------------------------------------------------------------------------

def _need(path: Path) -> Path:
    if not path.exists():
        raise FixtureMissing(f"golden fixture {path} not found (../shared/data next to the repository, or set "
                             f"IDTPRIOR_SHARED_DATA)")
    return path


def kth_frames(indices: range | list[int], short_side: int | None = None) -> list[np.ndarray]:
    """Frames of the KTH clip at ``indices`` (increasing): (120, 160, 3) uint8 RGB each, or resized."""
    from idtprior.video.io import iter_frames

    wanted = list(indices)
    frames = itertools.islice(iter_frames(_need(KTH_VIDEO), short_side=short_side), wanted[-1] + 1)
    keep = set(wanted)
    return [f for t, f in enumerate(frames) if t in keep]


def reference_idt_rows(start: int, count: int) -> np.ndarray:
    """Rows ``start:start + count`` of the reference release's own IDT output on the KTH clip: (count, 436) float32.

    Real descriptors that no code of this package computed: the codebook and encoding goldens do not move when the
    IDT extractor changes."""
    with gzip.open(_need(KTH_IDT_TEXT), "rt", encoding="ascii") as f:
        lines = list(itertools.islice(f, start, start + count))
    return np.array([line.split() for line in lines], np.float64).astype(np.float32)


def projection(dim: int, out: int = 16, seed: int = 0) -> np.ndarray:
    """A fixed seeded Gaussian matrix ``(dim, out)`` float64, columns of unit expected norm: a golden keeps
    ``x @ projection`` of wide rows instead of the rows."""
    return np.random.default_rng([seed, dim, out]).standard_normal((dim, out)) / np.sqrt(dim)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """OpenCV, BLAS and torch on one thread inside a golden's computation, restored after: multi-threaded CPU kernels
    may sum in a varying order, and on the test machine's 2 shared cores threads only contend (a 426 x 426
    eigendecomposition takes 20 ms on one OpenBLAS thread, up to seconds on two busy ones)."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    old_cv2, old_torch = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(old_cv2)
        torch.set_num_threads(old_torch)


def _write_stored(path: Path, stored: np.ndarray, frames: int, rotation: int | None = None,
                  sar: Fraction | None = None) -> Path:
    """A lossless RGB H.264 video of ``stored`` repeated, with a display rotation or a sample aspect ratio (as a phone
    or an anamorphic camera stores frames)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=25)
        s.height, s.width = stored.shape[:2]
        s.pix_fmt, s.options = "rgb24", {"crf": "0"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _idt_summary(rows: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """IDT rows (N, D) as a small golden: the count, the 10 geometry columns (exact trajectory positions), the column
    sums, and a projection of every row's shape and descriptor columns."""
    rows = np.asarray(rows, np.float32)
    return {f"{prefix}rows": np.array(len(rows), np.int64), f"{prefix}info": rows[:, :10],
            f"{prefix}column_sums": rows.astype(np.float64).sum(0),
            f"{prefix}descriptor_projection": rows[:, 10:].astype(np.float64) @ projection(rows.shape[1] - 10)}


# --- ingest and decode ----------------------------------------------------------------------------------------------

def ingest_golden() -> dict[str, np.ndarray]:
    """``probe_video`` facts of four small generated videos: H.264 in MP4, a phone video stored sideways with a 90
    degree display rotation, anamorphic pixels (2:1), and an MKV at 29.97 fps (no frame count in the container: the
    count comes from duration x fps)."""
    from idtprior.video.io import probe_video, write_video

    frames = moving_square_frames(10, 48, 64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = [folder / "plain.mp4", folder / "phone.mp4", folder / "anamorphic.mp4", folder / "ntsc.mkv"]
        write_video(paths[0], frames, fps=25, options={"preset": "ultrafast"})
        _write_stored(paths[1], np.rot90(frames[0], k=-1), 4, rotation=90)
        _write_stored(paths[2], frames[0][:, ::2], 4, sar=Fraction(2, 1))
        write_video(paths[3], frames, fps=30000 / 1001, options={"preset": "ultrafast"})
        infos = [probe_video(p) for p in paths]
    return {
        "duration": np.array([i.duration for i in infos], np.float64),
        "fps": np.array([i.fps for i in infos], np.float64),
        "frame_count": np.array([i.frame_count for i in infos], np.int64),
        "height_width": np.array([(i.height, i.width) for i in infos], np.int64),
        "rotation": np.array([i.rotation for i in infos], np.int64),
        "sample_aspect": np.array([i.sample_aspect for i in infos], np.float64),
        "codec": np.array([i.codec for i in infos]),
    }


def _decoded(path: Path, short_side: int, max_frames: int, serializer=None) -> np.ndarray:
    """What ``stages/decode.py``'s ``decode_one`` stores for ``path``: ``iter_frames`` resized to ``short_side``,
    streamed by ``write_frames`` into an in-memory Zarr group (time chunks of 3, so one chunk is partial), read back."""
    import zarr

    from idtprior.storage import write_frames
    from idtprior.video.io import iter_frames

    group = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w")
    write_frames(group, "video", iter_frames(path, short_side=short_side), time_chunk=3, fps=25.0,
                 max_frames=max_frames, serializer=serializer)
    return np.asarray(group["video"][...])


def _decode_golden(serializer_of: Callable[[], object] | None) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        small = _write_stored(Path(tmp) / "small.mp4", moving_square_frames(1, 24, 32)[0], 3)
        serializer = serializer_of() if serializer_of else None
        return {
            # KTH's 120 rows shrunk to 32 (area interpolation): 4 of its frames
            "kth_shrunk": _decoded(_need(KTH_VIDEO), 32, 4, serializer),
            # a lossless 24 x 32 video enlarged to a short side of 36 (bilinear)
            "small_enlarged": _decoded(small, 36, 3, serializer),
        }


def decode_golden() -> dict[str, np.ndarray]:
    """The frames the decode stage stores (zstd, lossless): KTH shrunk, and a small video enlarged."""
    return _decode_golden(None)


def decode_jpeg_golden() -> dict[str, np.ndarray]:
    """``decode_golden`` stored as one JPEG per frame (``decode.codec: jpeg``) at the codec's default quality, read
    back through the JPEG decoder."""
    from idtprior.video.framecodec import JpegFrames

    return _decode_golden(JpegFrames)


# --- detect and IDT -------------------------------------------------------------------------------------------------

DETECT_FRAMES = (0, 40, 80, 120)  # frames of the KTH clip with a hand-annotated person box (tests/fixtures)


def detect_golden() -> dict[str, np.ndarray]:
    """Person boxes of the default detector (``DetectParams()``: ssdlite, score >= 0.5) on four KTH frames, packed as
    the detect stage stores them (``offsets`` (T + 1,), ``rows`` (N, 5) ``[x1, y1, x2, y2, score]``)."""
    from idtprior.video import detect as detect_core

    frames = np.stack(kth_frames(list(DETECT_FRAMES)))
    offsets, rows = detect_core.pack_boxes(detect_core.detect(frames, detect_core.DetectParams()))
    return {"offsets": offsets, "rows": rows}


def sample_selection(n_rows: int, video_id: str, sample_rows: int = 40) -> np.ndarray:
    """The rows the IDT stage keeps of a video's ``n_rows`` (``stages/idt.py``'s ``keep_sample``, shared by both
    backends: ``sample_rows`` drawn with a seed of the config's and the video id's), as their indices: rows whose
    every value is their index go in, and what it stores comes back."""
    from idtprior.config.stages import IDTConfig
    from idtprior.storage import Workspace
    from idtprior.stages.idt import SampleJob, keep_sample

    rows = np.repeat(np.arange(n_rows, dtype=np.float32)[:, None], 436, axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        keep_sample(video_id, tmp, "idt", "chunk", "v", rows, SampleJob.of(IDTConfig(sample_rows=sample_rows)))
        kept = np.asarray(Workspace(tmp).chunk_group("idt", "chunk", "v")[video_id][...])
    return kept[:, 0].astype(np.int64)


def idt_golden() -> dict[str, np.ndarray]:
    """``extract_idt`` (the CPU extractor, ``IDTParams()``: the reference release's defaults) on the first 17 KTH
    frames: the trajectories that end at frames 15 and 16, no person boxes; and the rows the stage would keep of
    them for the codebook sample."""
    from idtprior.video.idt import IDTParams, extract_idt

    rows = extract_idt(kth_frames(range(17)), IDTParams())
    return {**_idt_summary(rows), "sample_kept": sample_selection(len(rows), "person01_boxing_d1")}


TORCH_IDT_PARAMS = dict(track_length=3)  # 4 frames make a trajectory: a few frames' worth of the torch extractor


def idt_torch_golden() -> dict[str, np.ndarray]:
    """``extract_idt_batch`` (the torch backend, on the CPU) on a batch of two snippets of an 80 x 80 crop of the KTH
    clip around the boxer, of different lengths (frames 0-6 and 40-44: the shorter leaves the batch first),
    trajectories of 3 steps; and the rows the stage would keep of the longer one's."""
    from idtprior.video.idt import IDTParams
    from idtprior.video.idt.torch_extract import extract_idt_batch

    crop = [f[16:96, 40:120] for f in kth_frames(range(45))]
    rows = extract_idt_batch([crop[:7], crop[40:45]], IDTParams(**TORCH_IDT_PARAMS), device="cpu")
    return {**_idt_summary(rows[0], "long_"), **_idt_summary(rows[1], "short_"),
            "long_sample_kept": sample_selection(len(rows[0]), "long", 10)}


# --- codebook, encoding, clusters -----------------------------------------------------------------------------------

CODEBOOK_ROWS = 400  # reference rows the codebook is fitted on
CODEBOOK_COMPONENTS = 8


def codebook_sample() -> np.ndarray:
    """(424, 426) float32: the descriptors of the first 400 reference IDT rows of the KTH clip, and 24 near-copies of
    one of them (jitter 1e-5). Real samples hold such near-duplicates (static background trajectories): they make a
    component whose variances sit on the floor and whose E-step takes the float64 path (``ILL_CONDITIONED_Q``)."""
    rows = reference_idt_rows(0, CODEBOOK_ROWS)[:, 10:]
    copies = rows[7] + 1e-5 * np.random.default_rng(3).standard_normal((24, rows.shape[1]))
    return np.concatenate([rows, copies.astype(np.float32)])


def fit_codebook_golden() -> dict[str, np.ndarray]:
    """``fit_codebook_with_report`` on ``codebook_sample()`` in both PCA modes (``concat``: Kinetics' config,
    ``per_type``: the demo's), with what ``stages/fit_codebook.py``'s ``codebook_params`` sets taken from a small config (8
    components, 15 EM iterations) and every other setting (tolerance, initialisation, variance floor, chunk rows) the
    core's default."""
    from idtprior.encoding.codebook import CodebookParams, SmallSampleWarning, fit_codebook_with_report

    sample = codebook_sample()
    out: dict[str, np.ndarray] = {}
    for mode in ("concat", "per_type"):
        params = CodebookParams(n_components=CODEBOOK_COMPONENTS, pca_mode=mode, pca_variance=0.9, gmm_iters=15,
                                seed=0, sketch_dim=64, sketch_seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)  # 53 rows per component, on purpose
            book, reports = fit_codebook_with_report(sample, params)
        for i, (block, report) in enumerate(zip(book.blocks, reports)):
            key = f"{mode}{i}_"
            out[key + "columns"] = np.array([block.start, block.stop], np.int64)
            out[key + "pca_mean"] = block.pca_mean
            # components are orthonormal rows with a fixed sign: a projection keeps every one of them
            out[key + "pca_components_projection"] = block.pca_components.astype(np.float64) @ projection(
                block.stop - block.start, 8)
            out[key + "pca_variance_kept"] = np.array(report.pca_variance_kept, np.float64)
            out[key + "gmm_weights"] = block.gmm.weights
            out[key + "gmm_means"] = block.gmm.means
            out[key + "gmm_log_variances"] = np.log(block.gmm.variances)
            out[key + "log_likelihood"] = np.array(report.log_likelihood, np.float64)
            out[key + "converged_reseeded"] = np.array([report.converged, report.reseeded], np.int64)
    return out


def synthetic_codebook(rows: np.ndarray, mode: str = "concat", sketch_dim: int = 64, seed: int = 0):
    """A seeded codebook for descriptors like ``rows`` (n, 426), made without ``fit_codebook`` (the encode goldens
    must not move when codebook fitting changes): per block, a random orthonormal projection to a few dimensions
    centred on the rows' mean, and an 8-component GMM whose means are projected rows and whose variances are the
    projected data's, scaled by seeded factors; component 0 is tight (1e-4 of the data's variance) around a row, so
    the E-step of the rows near it takes the float64 path."""
    from idtprior.encoding.codebook import DESCRIPTOR_TYPES, Codebook, CodebookBlock
    from idtprior.encoding.gmm import DiagGMM

    rng = np.random.default_rng([seed, 41])
    if mode == "concat":
        spans, dims = [(0, rows.shape[1])], [24]
    else:
        bounds = np.cumsum([0] + [d for _, d in DESCRIPTOR_TYPES])
        spans, dims = list(zip(bounds[:-1], bounds[1:])), [4, 8, 8, 6, 6]
    blocks = []
    for (start, stop), dim in zip(spans, dims):
        x = rows[:, start:stop].astype(np.float64)
        comps = np.linalg.qr(rng.standard_normal((stop - start, dim)))[0].T  # (dim, D_in) orthonormal rows
        mean = x.mean(0)
        z = (x - mean) @ comps.T
        k = 8
        means = z[rng.choice(len(z), k, replace=False)] + 0.1 * z.std(0) * rng.standard_normal((k, dim))
        variances = z.var(0) * rng.uniform(0.3, 1.5, (k, dim))
        variances[0] = z.var(0) * 1e-4
        weights = rng.dirichlet(np.full(k, 4.0))
        gmm = DiagGMM(weights.astype(np.float32), means.astype(np.float32), variances.astype(np.float32))
        blocks.append(CodebookBlock(int(start), int(stop), mean.astype(np.float32), comps.astype(np.float32), gmm))
    return Codebook(blocks=tuple(blocks), pca_mode=mode, sketch_seed=seed, sketch_dim=sketch_dim,
                    input_dim=rows.shape[1])


def _encode_videos(videos: dict[str, np.ndarray], books: dict[str, object]) -> dict[str, np.ndarray]:
    """What the encode stage computes of each video's IDT rows (n, 436), per codebook: ``stages/encode.py``'s
    ``encode_rows`` (the sketch and the valid flag it stores), and the Fisher vector it projects."""
    from idtprior.encoding import fisher_vector
    from idtprior.stages.encode import encode_rows

    out: dict[str, np.ndarray] = {}
    for mode, book in books.items():
        for name, rows in videos.items():
            encoded = encode_rows(rows, book, keep_descriptors=False)
            out[f"{mode}_{name}_fv"] = np.asarray(fisher_vector(rows[:, 10:], book)[0])
            out[f"{mode}_{name}_valid"] = np.array(encoded["valid"])
            out[f"{mode}_{name}_sketch"] = encoded["_sketch"]
    return out


def _encode_books(rows: np.ndarray) -> dict[str, object]:
    return {mode: synthetic_codebook(rows[:, 10:], mode) for mode in ("concat", "per_type")}


def encode_golden() -> dict[str, np.ndarray]:
    """Fisher vectors and count sketches of three videos' reference IDT rows (300 rows, one row, none) under a seeded
    codebook in each PCA mode: the encode stage after its IDT extraction (whose golden is ``idt``'s)."""
    codebook_rows = reference_idt_rows(0, CODEBOOK_ROWS)
    video = reference_idt_rows(CODEBOOK_ROWS, 300)
    videos = {"many": video, "one": video[:1], "none": video[:0]}
    return _encode_videos(videos, _encode_books(codebook_rows))


def encode_torch_golden() -> dict[str, np.ndarray]:
    """``encode_batch``'s path on the CPU: the torch extractor's rows of a 64 x 64 crop of the first 16 KTH frames
    (``IDTParams()``, whose 436 columns the codebook takes), then the Fisher vector and sketch of each codebook."""
    from idtprior.video.idt import IDTParams
    from idtprior.video.idt.torch_extract import extract_idt_batch

    crop = [f[20:84, 40:104] for f in kth_frames(range(16))]
    rows = extract_idt_batch([crop], IDTParams(), device="cpu")[0]
    out = _encode_videos({"crop": rows}, _encode_books(reference_idt_rows(0, CODEBOOK_ROWS)))
    out["rows"] = np.array(len(rows), np.int64)
    return out


def cluster_sketches(n: int = 200, dim: int = 64, centres: int = 12, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 seeded stand-ins for sketches: unit-norm rows around ``centres`` overlapping centres."""
    rng = np.random.default_rng([seed, 7])
    c = rng.standard_normal((centres, dim))
    x = c[rng.integers(0, centres, n)] + 1.2 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cluster_golden() -> dict[str, np.ndarray]:
    """``kmeans`` as ``stages/cluster.py``'s ``cluster_task`` calls it (k, runs, seed, iters, n_init from the config; init
    and memory budget the core's defaults) on 200 seeded sketches, k = 8 (fewer than the 12 planted centres: the
    seeding decides which merge). The NumPy backend: faiss, where installed, is another implementation."""
    from idtprior.encoding import kmeans

    labels, centroids = kmeans(cluster_sketches(), 8, runs=2, seed=0, iters=20, n_init=2, backend="numpy")
    return {"labels": labels, "centroids": centroids}


# --- training and evaluation ----------------------------------------------------------------------------------------

def _tiny_params(**overrides):
    """CPU-sized ``PretrainParams``: width 1/8, 16-frame 48 x 48 clips, batch 4; every other field the core's default
    (lr, tau, momentum, weight decay, augmentation). Not 32 x 32: the last stage's maps would be 1 x 1 x 1, its
    BatchNorm would normalise over the batch's 4 values alone, and the step's gradients would carry float32 rounding
    up to 1e-3 relative."""
    from idtprior.models.lightning import PretrainParams

    base = dict(width=0.125, embed_dim=16, clip_length=16, crop_size=48, batch_size=4, negatives=8, la_k=8,
                n_clusters=4, kmeans_runs=2, num_workers=0, accelerator="cpu", progress_bar=False)
    return PretrainParams(**{**base, **overrides})


def _one_step(params, source, cluster_labels=None) -> dict[str, np.ndarray]:
    """One training step of ``PretrainModule`` as Lightning runs the first of epoch 0: the module's epoch-start hook
    (NCE noise seeded for (seed, epoch 0, rank 0); the per-epoch K-means of ``bank`` / ``joint`` clusters), the first
    batch of the epoch's sampler order (training clips), ``training_step``, backward, the optimiser's step, then the
    memory bank's update."""
    from types import SimpleNamespace

    from idtprior.models.data import ClipDataset, EpochSampler, collate_clips
    from idtprior.models.lightning import PretrainModule

    module = PretrainModule(params, len(source), cluster_labels=cluster_labels)
    dataset = ClipDataset(source, params.clip_length, params.crop_size, train=True, seed=params.seed,
                          frame_step=params.frame_step, scales=params.crop_scales, grayscale_p=params.grayscale_p,
                          jitter=params.color_jitter, flip=params.hflip)
    keys = list(itertools.islice(EpochSampler(len(source), seed=params.seed), params.batch_size))
    indices, clips = collate_clips([dataset[k] for k in keys])  # (B,), (B, 3, T, H, W)
    optimizer = module.configure_optimizers()["optimizer"]
    before = [p.detach().double().clone() for p in module.parameters()]
    module.trainer = SimpleNamespace(global_rank=0, current_epoch=0)  # what the hook reads of Lightning's Trainer
    module.on_train_epoch_start()
    module.trainer = None
    module.train()
    with warnings.catch_warnings():  # self.log without a Trainer: a warning, and nothing logged
        warnings.filterwarnings("ignore", message=".*self.trainer. reference is not registered")
        out = module.training_step((indices, clips), 0)
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    module.on_train_batch_end(out, (indices, clips), 0)
    params_after = [p.detach().double() for p in module.parameters()]
    return {
        "indices": indices.numpy(),
        "clip_means": clips.mean(dim=(3, 4)).numpy(),  # (B, 3, T): crop, jitter, flip and mean subtraction
        "cluster_labels": module.cluster_labels.numpy(),  # (m, N); (0, N) for IR
        "loss": np.array(float(out["loss"].detach())),
        "log_z": np.array(float(module.log_z)),  # nan but for IR
        "embeddings": out["embeddings"].numpy(),  # (B, D) before the step
        "bank_rows": module.bank.bank[indices].numpy(),  # after the momentum update
        "param_norms": np.array([float(p.norm()) for p in params_after]),  # per parameter tensor
        "update_norms": np.array([float((p - b).norm()) for p, b in zip(params_after, before)]),
        "fc_weight": module.encoder.fc.weight.detach().numpy(),
    }


def pretrain_golden() -> dict[str, np.ndarray]:
    """One training step of each objective's path, each from the same seeded initial network, on 8 tiny moving-square
    videos of 16 frames (48 x 48): Instance Recognition (NCE), Local Aggregation with given IDT cluster labels, and
    Local Aggregation with the per-epoch K-means of the memory bank."""
    from idtprior.models.data import ArrayClipSource, moving_squares

    videos, labels = moving_squares(8, frames=16, size=48, seed=3)
    source = ArrayClipSource(videos)
    clusters = np.stack([labels, np.arange(8) % 3])  # (m=2, N): motion labels and a second clustering
    steps = {"ir": _one_step(_tiny_params(objective="ir"), source),
             "la": _one_step(_tiny_params(objective="la", cluster_source="idt"), source, clusters),
             "la_bank": _one_step(_tiny_params(objective="la", cluster_source="bank"), source)}
    return {f"{name}_{k}": v for name, step in steps.items() for k, v in step.items()}


def evaluation_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded frozen-network stand-ins: train ``(60, 16)`` and test ``(30, 16)`` float32 features of 4 classes whose
    means overlap (so neighbours disagree), and their ``(60,)``, ``(30,)`` int64 labels."""
    rng = np.random.default_rng([seed, 13])
    means = rng.standard_normal((4, 16))
    y_train, y_test = np.arange(60) % 4, rng.integers(0, 4, 30)
    train = means[y_train] + 1.5 * rng.standard_normal((60, 16))
    test = means[y_test] + 1.5 * rng.standard_normal((30, 16))
    return train.astype(np.float32), y_train.astype(np.int64), test.astype(np.float32), y_test.astype(np.int64)


def knn_sweep(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A weighted kNN's decision boundary as an accuracy: training features of a broad class (40 rows around e0) and a
    tight one (6 rows around e1), and 2001 queries on the arc from e0 to e1, all labelled with the tight class. Where
    the tight class's few near neighbours outvote the broad class's many farther ones depends on k and on the
    weights exp(sim / tau): the accuracy is the fraction of the arc on the tight class's side, resolved to 1/2001."""
    rng = np.random.default_rng([seed, 17])
    e0, e1 = np.eye(8)[0], np.eye(8)[1]
    train = np.concatenate([e0 + 0.6 * rng.standard_normal((40, 8)), e1 + 0.15 * rng.standard_normal((6, 8))])
    angle = np.linspace(0.0, np.pi / 2, 2001)[:, None]
    queries = np.cos(angle) * e0 + np.sin(angle) * e1
    return (train.astype(np.float32), np.repeat([0, 1], [40, 6]).astype(np.int64), queries.astype(np.float32),
            np.ones(len(queries), np.int64))


def evaluate_golden() -> dict[str, np.ndarray]:
    """The evaluate stage's cores on tiny inputs: features of a seeded tiny network over 3 moving-square videos
    (``extract_feature_kinds``, 2 clips each); on seeded features the weighted kNN (overall and per test video, as
    ``stages/evaluate/task.py``'s ``knn_result`` calls it, with the core's default k and tau) and its decision boundary
    (``knn_sweep``), the linear probe's probabilities, the few-shot draws, and K-means' NMI and purity against the
    labels."""
    import torch

    from idtprior.evaluation.probe import extract_feature_kinds, few_shot_indices, kmeans_agreement, knn_probe, \
        linear_probe
    from idtprior.models.data import ArrayClipSource, moving_squares
    from idtprior.models.resnet3d import ResNet3d

    videos, _ = moving_squares(3, frames=10, size=40, seed=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = ResNet3d("resnet18", 8, 0.125)
    features = extract_feature_kinds(encoder, ArrayClipSource(videos), clip_length=4, crop_size=32, clips=2, seed=0,
                                     batch_size=4, device="cpu")
    train_x, y_train, test_x, y_test = evaluation_features()
    knn_each = [knn_probe(train_x, y_train, test_x[i:i + 1], y_test[i:i + 1]) == 1.0 for i in range(len(y_test))]
    probe = linear_probe(train_x, y_train, test_x, y_test, c=1.0, max_iter=1000, seed=0)
    agreement = kmeans_agreement(test_x, y_test, 4, runs=1, seed=0)
    return {
        "backbone_features": features["backbone"], "embedding_features": features["embedding"],
        "knn_accuracy": np.array(knn_probe(train_x, y_train, test_x, y_test)), "knn_correct": np.array(knn_each),
        "knn_sweep_accuracy": np.array(knn_probe(*knn_sweep())),
        "probe_probabilities": probe.probabilities, "probe_predictions": probe.predictions,
        "few_shot_first": few_shot_indices(y_train, 5, "first"),
        "few_shot_random": few_shot_indices(y_train, 5, "random", 1),
        "kmeans_nmi_purity": np.array([agreement["nmi"], agreement["purity"]]),
    }


_COMPUTE: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "ingest": ingest_golden, "decode": decode_golden, "decode@jpeg": decode_jpeg_golden, "detect": detect_golden,
    "idt": idt_golden, "idt@torch": idt_torch_golden, "fit_codebook": fit_codebook_golden, "encode": encode_golden,
    "encode@torch": encode_torch_golden, "cluster": cluster_golden, "pretrain": pretrain_golden,
    "evaluate": evaluate_golden,
}


def main(argv: list[str]) -> int:
    """``goldens.py write [--force] [STAGE ...]``: write the goldens of the stages named (all when none)."""
    force = "--force" in argv
    argv = [a for a in argv if a != "--force"]
    if not argv or argv[0] != "write":
        print(f"usage: python {Path(__file__).name} write [--force] [STAGE ...]  (stages: {' '.join(GOLDEN_STAGES)})",
              file=sys.stderr)
        return 2
    stages = argv[1:] or list(GOLDEN_STAGES)
    unknown = [s for s in stages if s not in GOLDEN_STAGES]
    if unknown:
        print(f"unknown stages {unknown}; known: {' '.join(GOLDEN_STAGES)}", file=sys.stderr)
        return 2
    for stage in stages:
        written = write(stage, force=force)
        path = golden_file(stage)
        what = f"written ({path.stat().st_size:,} bytes)" if written else "unchanged within tolerance: kept"
        print(f"{stage}: {path.relative_to(TESTS_DIR.parent)} {what}, behaviour version {stage_version(stage)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
