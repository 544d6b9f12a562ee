"""The C part of the package (project metadata lives in pyproject.toml): the IDT extractor's per-pixel loops.

The library records the SHA-256 of the source it was built from; ``idtprior.video.idt.kernels`` refuses to load a
library built from another version of ``_kernels.c`` (the code fingerprints hash that file, so a stale library would
put old results under new cache keys)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "idtprior/video/idt/_kernels.c"
digest = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "idtprior.video.idt._kernels",
            [SOURCE],
            define_macros=[("IDT_KERNELS_SHA256", f'"{digest}"')],
            # no fused multiply-add: the loops must round exactly as the numpy code they replaced
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
