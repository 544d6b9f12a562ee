"""Improved Dense Trajectories: a pip-installable extractor faithful to the reference release's output.

Public API: ``IDTParams``, ``extract_idt``, ``iter_idt``, the text-format reader and writer, ``render_trajectories``.
"""

from .extract import PARTS, extract_idt, iter_idt, pyramid_scales
from .params import IDTParams

__all__ = ["IDTParams", "PARTS", "extract_idt", "iter_idt", "pyramid_scales"]
