"""Mask R-CNN person boxes (the paper's detector: a COCO Mask R-CNN) with torchvision's architecture.

Weights come from a local file only (a state dict, or a checkpoint dict holding one under ``model``/``state_dict``):
nothing is downloaded at run time. torchvision is an optional extra (``pip install -e .[maskrcnn]``), imported here
lazily. Frames run batched, on CUDA where there is one.
"""

from pathlib import Path

import numpy as np

from .ssdlite import ModelMissingError

PERSON = 1  # COCO category id of "person" in torchvision's 91-class heads


def torchvision_module():
    try:
        import torch
        import torchvision.models.detection as detection
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
        raise ImportError(f"the maskrcnn person detector needs torchvision (a build matching the installed torch): "
                          f"pip install -e '.[maskrcnn]' ({type(e).__name__}: {e})") from e
    return torch, detection


class MaskRCNNDetector:
    """``detector(batch (B, H, W, 3) uint8 RGB) -> B arrays (K, 5) float32 [x1, y1, x2, y2, score]``, people only."""

    def __init__(self, weights: str | None, arch: str = "maskrcnn_resnet50_fpn", device: str = "auto",
                 input_size: int = 800):
        if not weights:
            raise ModelMissingError("detect.backend maskrcnn needs detect.maskrcnn_weights: the path of a local "
                                    "state-dict file (COCO weights; see the README), nothing is downloaded")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelMissingError(f"maskrcnn weights file {path} does not exist (detect.maskrcnn_weights)")
        torch, detection = torchvision_module()
        builder = getattr(detection, arch, None)
        if builder is None or not callable(builder):
            raise ValueError(f"maskrcnn_arch {arch!r} is not a torchvision.models.detection builder")
        # num_classes=91: torchvision's COCO heads, where class 1 is person.
        model = builder(weights=None, weights_backbone=None, num_classes=91, min_size=input_size,
                        max_size=int(input_size * 1333 / 800))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            for key in ("model", "state_dict"):
                if key in state and isinstance(state[key], dict):
                    state = state[key]
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"maskrcnn weights {path} do not fit {arch}: {e}") from e
        if getattr(model, "roi_heads", None) is not None and hasattr(model.roi_heads, "mask_roi_pool"):
            # Boxes are all IDT needs: skip the mask branch (its head runs on every kept detection).
            model.roi_heads.mask_roi_pool = model.roi_heads.mask_head = model.roi_heads.mask_predictor = None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)  # (B, H, W, 3) uint8
            images = list(x.permute(0, 3, 1, 2).float().div_(255.0))  # B x (3, H, W) in [0, 1]
            outputs = self.model(images)
        h, w = batch.shape[1:3]
        out = []
        for o in outputs:
            keep = o["labels"] == PERSON
            boxes = torch.cat([o["boxes"][keep], o["scores"][keep, None]], dim=1).float().cpu().numpy().reshape(-1, 5)
            # rescaling to the frame's size can overshoot its border by float error
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            out.append(boxes)
        return out
