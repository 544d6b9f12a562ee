"""The environment that computed a result: versions of the packages that shape results, stored with each record (out
of its key) so ``idtprior status`` and a stage's summary can say where today's environment differs.

Versions are read from the installed distributions' metadata (nothing is imported for it), FFmpeg's from PyAV's
libraries; faiss only where this process has used it (the cluster stage's ``backend: faiss``).
"""

import platform
import sys
from functools import cache
from importlib import metadata

PACKAGES = {"numpy": ("numpy",), "scipy": ("scipy",), "opencv": ("opencv-contrib-python-headless", "opencv-python",
            "opencv-python-headless", "opencv-contrib-python"), "av": ("av",), "zarr": ("zarr",), "torch": ("torch",),
            "lightning": ("pytorch-lightning",), "scikit-learn": ("scikit-learn",)}
"""Name in a record -> the distributions that provide it, first installed wins."""


def _version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _ffmpeg() -> str | None:
    try:
        import av
    except ImportError:
        return None
    codec = getattr(av, "library_versions", {}).get("libavcodec")
    return ".".join(map(str, codec)) if codec else None


@cache
def _installed() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for key, dists in PACKAGES.items():
        version = _version(dists)
        if version:
            found[key] = version
    ffmpeg = _ffmpeg()
    if ffmpeg:
        found["libavcodec"] = ffmpeg
    return found


def environment() -> dict[str, str]:
    """Package -> version of this process, for a record; faiss where this process imported it."""
    env = dict(_installed())
    if "faiss" in sys.modules:
        found = _version(("faiss-cpu", "faiss-gpu", "faiss"))
        env["faiss"] = found or getattr(sys.modules["faiss"], "__version__", "?")
    return env


def differences(recorded: dict[str, str], now: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Package -> (recorded version, today's) where they differ; a package recorded and gone today reads "none"."""
    now = environment() if now is None else now
    return {k: (v, now.get(k, "none")) for k, v in sorted(recorded.items()) if now.get(k, "none") != v}
