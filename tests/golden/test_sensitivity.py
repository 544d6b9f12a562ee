"""The goldens are tight enough to see a change of behaviour: per stage, one constant or default of its core is edited
(by monkeypatch, undone after the test) as a developer might edit it, and the recomputed golden must then fall
outside the stored one's tolerance in the arrays that constant feeds, i.e. ``test_goldens.py`` would fail.

The edits are small where the core allows it (a JPEG quality of 85 for 90, a temperature of 0.075 for 0.07, a
variance floor of 2e-4 for 1e-4): a golden that only catches gross changes would let a version bump slip.
"""

import dataclasses
import importlib
import inspect

import cv2
import pytest
import torch

import goldens


def set_default(monkeypatch, target, name: str, value) -> None:
    """Make ``value`` the default of parameter ``name`` of ``target`` (a function, or a dataclass: its field), as an
    edit of the default in the source would; undone by ``monkeypatch``."""
    func = target.__init__ if isinstance(target, type) else target
    param = inspect.signature(func).parameters[name]
    if param.default is inspect.Parameter.empty:
        raise ValueError(f"{target.__qualname__}.{name} has no default to change")
    if param.kind is inspect.Parameter.KEYWORD_ONLY:
        monkeypatch.setitem(func.__kwdefaults__, name, value)
    else:
        positional = [p.name for p in inspect.signature(func).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty]
        defaults = list(func.__defaults__)
        defaults[positional.index(name)] = value
        monkeypatch.setattr(func, "__defaults__", tuple(defaults))
    if isinstance(target, type):  # a dataclass keeps its fields' defaults as class attributes too
        monkeypatch.setattr(target, name, value)


def assert_breaks_golden(stage: str, moved: set[str]) -> None:
    """Recompute ``stage`` (the edit in place) and assert that at least the arrays ``moved`` fall outside the stored
    golden's tolerance."""
    golden, _ = goldens.load(stage)
    try:
        computed = goldens.compute(stage)
    except goldens.FixtureMissing as e:
        pytest.skip(str(e))
    failing = {line.split(":")[0] for line in goldens.mismatches(stage, golden, computed)}
    assert moved <= failing, (f"{stage}: after the edit, {sorted(moved - failing)} still match the golden within "
                              f"{goldens.TOLERANCES[stage]}; the golden test would not notice this change of behaviour")


# --- one edit per stage: each makes it and returns the arrays that must move ---------------------------------------

def edit_ingest(monkeypatch) -> set[str]:
    """A probe that ignores the display matrix: the phone video's size and rotation come out as stored."""
    from idtprior.video import io as video_io

    real = video_io.frame_orientation
    monkeypatch.setattr(video_io, "frame_orientation", lambda frame, stream, path: dataclasses.replace(
        real(frame, stream, path), transpose=False, flip_rows=False, flip_cols=False))
    return {"height_width", "rotation"}


def edit_decode(monkeypatch) -> set[str]:
    """``iter_frames`` shrinking with bilinear instead of area interpolation."""
    from idtprior.video import io as video_io

    monkeypatch.setattr(video_io.cv2, "INTER_AREA", cv2.INTER_LINEAR)
    return {"kth_shrunk"}


def edit_decode_jpeg(monkeypatch) -> set[str]:
    """The JPEG codec's default quality 85 instead of 90."""
    from idtprior.video.framecodec import JpegFrames

    set_default(monkeypatch, JpegFrames, "quality", 85)
    return {"kth_shrunk", "small_enlarged"}


def edit_detect(monkeypatch) -> set[str]:
    """The SSDLite network fed 320 x 320 instead of 300 x 300 blobs."""
    from idtprior.video import detect as detect_core
    from idtprior.video.detect import ssdlite

    # a fresh network and detector for the edit: a cv2.dnn network whose first forward pass had 320 x 320 blobs gives
    # other outputs for 300 x 300 ones afterwards (measured: boxes 5 px apart), which would leak into later tests
    monkeypatch.setattr(detect_core, "_DETECTORS", {})
    monkeypatch.setattr(ssdlite, "load_ssdlite", ssdlite.load_ssdlite.__wrapped__)
    set_default(monkeypatch, ssdlite.ssdlite_boxes, "settings", ssdlite.SSDSettings(image_size=320))
    return {"rows"}


def edit_idt(monkeypatch) -> set[str]:
    """Farneback's polynomial sigma 1.2 instead of 1.5 (a core default the stage's config does not set)."""
    from idtprior.video.idt.params import IDTParams

    set_default(monkeypatch, IDTParams, "flow_poly_sigma", 1.2)
    return {"rows", "info", "column_sums", "descriptor_projection"}


def edit_idt_torch(monkeypatch) -> set[str]:
    """The flow's median filter 3 x 3 instead of 5 x 5."""
    from idtprior.video.idt.params import IDTParams

    set_default(monkeypatch, IDTParams, "median_size", 3)
    return {"long_rows", "long_column_sums", "short_rows", "short_column_sums"}


def edit_fit_codebook(monkeypatch) -> set[str]:
    """The GMM variance floor 2e-4 instead of 1e-4 of the data's variance (the near-duplicates' component sits on
    it)."""
    from idtprior.encoding.codebook import CodebookParams

    set_default(monkeypatch, CodebookParams, "covariance_floor", 2e-4)
    return {"concat0_gmm_log_variances", "concat0_log_likelihood", "per_type0_gmm_log_variances"}


def edit_encode(monkeypatch) -> set[str]:
    """The Fisher vector's power normalisation 0.6 instead of 0.5 (``encode_one`` leaves it at its default)."""
    from idtprior.encoding.fisher import fisher_vector

    set_default(monkeypatch, fisher_vector, "alpha", 0.6)
    return {"concat_many_fv", "concat_many_sketch", "per_type_one_fv", "per_type_one_sketch"}


def edit_encode_torch(monkeypatch) -> set[str]:
    """The torch backend's own code: a box instead of a Sobel smoothing in its minimum-eigenvalue test for dense
    sampling."""
    from idtprior.video.idt import torch_sampling

    monkeypatch.setattr(torch_sampling, "_SMOOTH", torch.tensor([1.0, 1.0, 1.0]))
    return {"concat_crop_fv", "concat_crop_sketch"}


def edit_cluster(monkeypatch) -> set[str]:
    """K-means' "auto" seeding threshold at 0 flops: random rows instead of k-means++."""
    kmeans_module = importlib.import_module("idtprior.encoding.kmeans")  # the package re-exports the function

    monkeypatch.setattr(kmeans_module, "KPP_AUTO_FLOPS", 0.0)
    return {"labels", "centroids"}


def edit_pretrain(monkeypatch) -> set[str]:
    """The NCE and LA temperature 0.075 instead of 0.07."""
    from idtprior.models.lightning import PretrainParams

    set_default(monkeypatch, PretrainParams, "tau", 0.075)
    return {"ir_loss", "ir_log_z", "ir_update_norms", "la_loss", "la_update_norms", "la_bank_loss"}


def edit_evaluate(monkeypatch) -> set[str]:
    """The kNN's temperature 0.075 instead of 0.07."""
    from idtprior.evaluation.probe import knn_probe

    set_default(monkeypatch, knn_probe, "tau", 0.075)
    return {"knn_sweep_accuracy"}


EDITS = {"ingest": edit_ingest, "decode": edit_decode, "decode@jpeg": edit_decode_jpeg, "detect": edit_detect,
         "idt": edit_idt, "idt@torch": edit_idt_torch, "fit_codebook": edit_fit_codebook, "encode": edit_encode,
         "encode@torch": edit_encode_torch, "cluster": edit_cluster, "pretrain": edit_pretrain,
         "evaluate": edit_evaluate}


@pytest.mark.parametrize("stage", goldens.GOLDEN_STAGES)
def test_golden_sees_an_edit_of_the_core(stage, monkeypatch):
    moved = EDITS[stage](monkeypatch)
    assert_breaks_golden(stage, moved)
