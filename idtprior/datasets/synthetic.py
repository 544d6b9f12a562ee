"""The synthetic motion benchmark: the embedded demo data.

Classes are defined by MOTION ONLY; APPEARANCE (background texture and colours, actor shape and colours, actor size)
and CAMERA motion (none, pan, shake) are drawn independently of the class. An appearance-only grouping therefore scores
near chance on the motion labels, and a representation that captures motion scores high: the paper's central claim,
testable in minutes.

Output layout (UCF101 style, so the evaluation reads it like a real dataset)::

    OUT/
      videos/<Class>/v_<Class>_g<GG>_c<CC>.mp4     H.264, yuv420p
      splits/classInd.txt  splits/trainlist01.txt  splits/testlist01.txt   (paths relative to videos/)
      labels.csv    video_id,path,label,split,group,background,actor_shape,actor_colour,camera
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


MOTIONS = ("BackAndForth", "Spinning", "FastTranslation", "Bouncing", "ApproachRecede", "Waving")
BACKGROUNDS = ("hstripes", "checker", "blobs", "gradient", "dots", "grid")
SHAPES = ("disc", "square", "triangle", "star", "bar", "cross")
CAMERAS = ("static", "pan", "shake")
_CLIPS_PER_GROUP = 4


@dataclass(frozen=True)
class SyntheticVideo:
    video_id: str
    relpath: str
    label: str
    split: str
    group: int
    background: str
    actor_shape: str
    actor_colour: int  # hue bucket 0..5
    camera: str


def _hue_rgb(hue: float, sat: float = 0.85, val: float = 0.95) -> tuple[int, int, int]:
    hsv = np.uint8([[[int(hue * 180) % 180, int(sat * 255), int(val * 255)]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A textured (H, W, 3) uint8 world larger than the frame; texture gives the camera-motion estimate features."""
    c1 = np.array(_hue_rgb(rng.random(), 0.5, 0.35 + 0.3 * rng.random()), np.float32)
    c2 = np.array(_hue_rgb(rng.random(), 0.6, 0.55 + 0.4 * rng.random()), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(10, 22)
    if kind == "hstripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + 0.3 * np.sin(xx / 17.0))
    elif kind == "checker":
        t = ((xx // period + yy // period) % 2).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), 1.0)
    elif kind == "blobs":
        t = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 4.0)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == "gradient":
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) / (h + w)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        t = 0.7 * t + 0.3 * (cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5) > 0.55)
    elif kind == "dots":
        t = np.zeros((h, w), np.float32)
        n = int(h * w / 120)
        for x, y in zip(rng.integers(0, w, n), rng.integers(0, h, n)):
            cv2.circle(t, (int(x), int(y)), int(rng.integers(1, 4)), 1.0, -1)
    elif kind == "grid":
        t = ((xx % period < 2) | (yy % period < 2)).astype(np.float32)
        t = np.maximum(t, 0.4 * cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0))
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_polygons(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit-size outline of the actor and an inner stripe (so rotation is visible), both (P, 2) float."""
    if shape == "disc":
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        body = np.stack([np.cos(a), np.sin(a)], 1)
    elif shape == "square":
        body = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85
    elif shape == "triangle":
        a = np.array([-90, 30, 150]) * np.pi / 180
        body = np.stack([np.cos(a), np.sin(a)], 1)
    elif shape == "star":
        a = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        body = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif shape == "bar":
        body = np.array([[-1, -0.35], [1, -0.35], [1, 0.35], [-1, 0.35]], float)
    elif shape == "cross":
        s = 0.33
        body = np.array([[-s, -1], [s, -1], [s, -s], [1, -s], [1, s], [s, s], [s, 1], [-s, 1], [-s, s], [-1, s],
                         [-1, -s], [-s, -s]], float)
    else:
        raise ValueError(f"unknown actor shape {shape!r}; known: {SHAPES}")
    stripe = np.array([[-0.9, -0.12], [0.9, -0.12], [0.9, 0.12], [-0.9, 0.12]], float) * 0.8
    return body, stripe


def _motion_state(motion: str, t: int, p: dict, w: int, h: int, margin: int) -> tuple[float, float, float, float]:
    """Actor centre (x, y) in world pixels, rotation (radians) and scale at frame ``t`` for a motion class; ``w`` x
    ``h`` is the camera's view, ``margin`` the world's border around it."""
    cx, cy, size = p["cx"], p["cy"], p["size"]
    if motion == "BackAndForth":  # hand-like oscillation along a random axis
        s = p["amp"] * math.sin(2 * math.pi * t / p["period"] + p["phase"])
        return cx + s * math.cos(p["axis"]), cy + s * math.sin(p["axis"]), p["angle0"], size
    if motion == "Spinning":
        return cx, cy, p["angle0"] + p["spin"] * t, size
    if motion == "FastTranslation":  # constant fast velocity, re-entering on the other side
        x = margin + (p["x0"] + p["speed"] * math.cos(p["dir"]) * t) % (w + 2 * size) - size
        y = cy - margin + p["speed"] * math.sin(p["dir"]) * 0.3 * t
        y = margin + (y - size) % (h - 2 * size) + size
        return x, y, p["angle0"], size
    if motion == "Bouncing":  # a ball under gravity on a floor, drifting sideways
        period = p["period"]
        ph = ((t / period) + p["phase"]) % 1.0
        height = p["amp"] * 4 * ph * (1 - ph)
        return cx + p["drift"] * (t - 32), p["floor"] - height, p["angle0"], size
    if motion == "ApproachRecede":  # scale change: divergent / convergent flow
        s = size * (1.35 + 0.75 * math.sin(2 * math.pi * t / p["period"] + p["phase"]))
        return cx, cy, p["angle0"], s
    if motion == "Waving":  # a bar swinging about a pivot at one end
        ang = p["angle0"] + 0.75 * math.sin(2 * math.pi * t / p["period"] + p["phase"])
        reach = 1.6 * size
        return (p["px"] + reach * math.cos(ang - math.pi / 2), p["py"] + reach * math.sin(ang - math.pi / 2),
                ang - math.pi / 2, size)
    raise ValueError(f"unknown motion {motion!r}; known: {MOTIONS}")


def render_video(motion: str, background: str, shape: str, colour: int, camera: str, frames: int, width: int,
                 height: int, seed) -> list[np.ndarray]:
    """Render one video: ``frames`` arrays (H, W, 3) uint8 RGB. Deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    margin = 40
    world = _background(background, height + 2 * margin, width + 2 * margin, rng)
    size = float(rng.uniform(9, 14))
    p = {
        "size": size, "cx": rng.uniform(0.35, 0.65) * width + margin, "cy": rng.uniform(0.35, 0.65) * height + margin,
        "amp": rng.uniform(22, 34), "period": rng.uniform(14, 22), "phase": rng.uniform(0, 2 * np.pi),
        "axis": rng.uniform(-0.3, 0.3), "angle0": rng.uniform(0, 2 * np.pi),
        "spin": rng.choice([-1, 1]) * rng.uniform(0.14, 0.24), "x0": rng.uniform(0, width),
        "speed": rng.uniform(4.5, 7.0), "dir": rng.choice([0.0, np.pi]) + rng.uniform(-0.25, 0.25),
        "drift": rng.uniform(-0.4, 0.4), "floor": margin + height * rng.uniform(0.75, 0.85),
        "px": rng.uniform(0.4, 0.6) * width + margin, "py": margin + height * rng.uniform(0.55, 0.7),
    }
    if motion == "Bouncing":
        p["amp"], p["period"] = rng.uniform(45, 60), rng.uniform(18, 26)
    if motion == "Waving":
        p["angle0"] = rng.uniform(-0.3, 0.3)
    body, stripe = _shape_polygons("bar" if motion == "Waving" and shape not in ("bar", "cross") else shape)
    actor_rgb = _hue_rgb((colour + rng.uniform(-0.3, 0.3)) / 6.0, 0.9, 1.0)
    stripe_rgb = tuple(int(c * 0.35) for c in actor_rgb)
    pan = rng.uniform(0.6, 1.1) * rng.choice([-1, 1], size=2) if camera == "pan" else np.zeros(2)
    shake = np.cumsum(rng.normal(0, 1.6, (frames, 2)), 0) * 0.6 if camera == "shake" else np.zeros((frames, 2))
    out = []
    for t in range(frames):
        x, y, ang, s = _motion_state(motion, t, p, width, height, margin)
        ox = float(np.clip(margin + pan[0] * (t - frames / 2) + shake[t, 0], 0, 2 * margin))
        oy = float(np.clip(margin + pan[1] * (t - frames / 2) + shake[t, 1], 0, 2 * margin))
        ix, iy = int(round(ox)), int(round(oy))
        frame = world[iy:iy + height, ix:ix + width].copy()
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        for poly, rgb in ((body, actor_rgb), (stripe, stripe_rgb)):
            pts = (poly * s) @ rot.T + np.array([x - ix, y - iy])
            cv2.fillPoly(frame, [np.round(pts * 16).astype(np.int32)], rgb, lineType=cv2.LINE_AA, shift=4)
        out.append(frame)
    return out


HELDOUT_BACKGROUNDS = BACKGROUNDS[4:]
HELDOUT_SHAPES = SHAPES[4:]
HELDOUT_COLOURS = (4, 5)
"""With ``heldout_appearance``: the backgrounds, actor shapes and actor colours of the test split only (training
videos draw from the others), as UCF101's group-wise split keeps a test group's scenes and actors out of training."""


def _appearance(rng: np.random.Generator, test: bool, heldout: bool) -> tuple[str, str, int]:
    if not heldout:  # the draws of the original benchmark, unchanged (the demo's data stays byte-identical)
        return (BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))], SHAPES[int(rng.integers(0, len(SHAPES)))],
                int(rng.integers(0, 6)))
    backgrounds = HELDOUT_BACKGROUNDS if test else tuple(b for b in BACKGROUNDS if b not in HELDOUT_BACKGROUNDS)
    shapes = HELDOUT_SHAPES if test else tuple(s for s in SHAPES if s not in HELDOUT_SHAPES)
    colours = HELDOUT_COLOURS if test else tuple(c for c in range(6) if c not in HELDOUT_COLOURS)
    return (backgrounds[int(rng.integers(0, len(backgrounds)))], shapes[int(rng.integers(0, len(shapes)))],
            colours[int(rng.integers(0, len(colours)))])


def plan_videos(videos_per_class: int, test_fraction: float, camera_motion_fraction: float, seed: int,
                heldout_appearance: bool = False) -> list[tuple[SyntheticVideo, int]]:
    """Decide every video's class, appearance and camera: appearance and camera independent of the class; with
    ``heldout_appearance`` the test videos' backgrounds, actor shapes and colours never occur in training."""
    rng = np.random.default_rng([seed, 7919])
    n_groups = max(1, math.ceil(videos_per_class / _CLIPS_PER_GROUP))
    n_test_groups = min(n_groups - 1, max(1, round(n_groups * test_fraction))) if n_groups > 1 else 0
    plan = []
    for _ci, motion in enumerate(MOTIONS):
        for i in range(videos_per_class):
            group, clip = i // _CLIPS_PER_GROUP + 1, i % _CLIPS_PER_GROUP + 1
            camera = "static"
            if rng.random() < camera_motion_fraction:
                camera = CAMERAS[1 + int(rng.integers(0, 2))]
            vid = f"v_{motion}_g{group:02d}_c{clip:02d}"
            test = group <= n_test_groups
            background, shape, colour = _appearance(rng, test, heldout_appearance)
            plan.append((SyntheticVideo(
                video_id=vid, relpath=f"{motion}/{vid}.mp4", label=motion, split="test" if test else "train",
                group=group, background=background, actor_shape=shape, actor_colour=colour, camera=camera),
                int(rng.integers(0, 2**31))))
    return plan


def make_demo_data(out: str | Path, videos_per_class: int = 40, frames: int = 64, width: int = 160,
                   height: int = 120, fps: int = 25, camera_motion_fraction: float = 0.3, test_fraction: float = 0.3,
                   seed: int = 0, heldout_appearance: bool = False, progress: bool = False) -> list[SyntheticVideo]:
    """Render the benchmark into ``out`` (see the module docstring for the layout); returns the videos' facts.

    Deterministic from ``seed``: the same arguments give the same labels and the same frames.
    """
    out = Path(out)
    if videos_per_class < 1 or frames < 2:
        raise ValueError(f"demo data needs videos_per_class >= 1 and frames >= 2, got {videos_per_class}, {frames}")
    plan = plan_videos(videos_per_class, test_fraction, camera_motion_fraction, seed, heldout_appearance)
    items = plan
    if progress:
        from tqdm import tqdm

        items = tqdm(plan, desc="rendering demo videos", unit="video")
    from idtprior.video.io import write_video  # PyAV, imported where videos are written: the module's other
    # functions (textured_pan_video: the IDT benchmarks' video) serve machines without it

    for video, vseed in items:
        path = out / "videos" / video.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        imgs = render_video(video.label, video.background, video.actor_shape, video.actor_colour, video.camera,
                            frames, width, height, vseed)
        write_video(path, imgs, fps=fps, codec="libx264", options={"crf": "18", "preset": "superfast"})
    # superfast, not veryfast: with this x264 build veryfast's output varies run to run; superfast is byte-stable
    _write_lists(out, [v for v, _ in plan])
    settings = {"videos_per_class": videos_per_class, "frames": frames, "width": width, "height": height, "fps": fps,
                "camera_motion_fraction": camera_motion_fraction, "test_fraction": test_fraction, "seed": seed,
                "heldout_appearance": heldout_appearance}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return [v for v, _ in plan]


SETTINGS_FILE = "demo-settings.json"
_ADDED_LATER = {"heldout_appearance": False}  # settings that data rendered before they existed was rendered without


def demo_data_mismatch(out: str | Path, settings: dict) -> list[str]:
    """How the demo data in ``out`` differs from ``settings`` (the arguments of :func:`make_demo_data`), one line per
    setting; ``[]`` when they match. Raises FileNotFoundError when ``out`` holds no settings record (data rendered by
    an older version, or by hand)."""
    path = Path(out) / SETTINGS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no record of the settings the demo data in {out} was rendered with")
    have = {**_ADDED_LATER, **json.loads(path.read_text())}
    return [f"{k}: {have.get(k)!r} in {out}, {v!r} in the config" for k, v in sorted(settings.items())
            if have.get(k) != v]


def _write_lists(out: Path, videos: list[SyntheticVideo]) -> None:
    class_index = {m: i + 1 for i, m in enumerate(MOTIONS)}
    splits = out / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i} {m}\n" for m, i in class_index.items()))
    (splits / "trainlist01.txt").write_text("".join(
        f"{v.relpath} {class_index[v.label]}\n" for v in videos if v.split == "train"))
    (splits / "testlist01.txt").write_text("".join(f"{v.relpath}\n" for v in videos if v.split == "test"))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "path", "label", "split", "group", "background", "actor_shape", "actor_colour",
                         "camera"])
        for v in videos:
            writer.writerow([v.video_id, f"videos/{v.relpath}", v.label, v.split, v.group, v.background,
                             v.actor_shape, v.actor_colour, v.camera])


def read_demo_labels(folder: str | Path) -> dict[str, dict[str, str]]:
    """``labels.csv`` of a demo folder as {video_id: row}."""
    with open(Path(folder) / "labels.csv", newline="") as f:
        return {row["video_id"]: row for row in csv.DictReader(f)}


def textured_pan_video(n: int, h: int = 240, w: int = 320, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames (h, w, 3) uint8 of a seeded scene: a slow pan over texture with two 60x60 objects moving against
    it (the IDT benchmarks' and ``idtprior plan --calibrate``'s video; not the demo's motion benchmark)."""
    rng = np.random.default_rng(seed)
    big = cv2.resize(rng.random((h // 4, w // 2)).astype(np.float32), (w * 2, h), interpolation=cv2.INTER_CUBIC)
    big = cv2.normalize(big, None, 30, 220, cv2.NORM_MINMAX).astype(np.uint8)
    obj = cv2.normalize(cv2.resize(rng.random((12, 12)).astype(np.float32), (60, 60)), None, 0, 255, cv2.NORM_MINMAX)
    out = []
    for t in range(n):
        img = big[:, int(t * 0.8) : int(t * 0.8) + w].copy()
        for _k, (x0, y0, vx, vy) in enumerate(((20, 40, 2.5, 0.5), (200, 150, -1.5, -1.0))):
            x, y = int(x0 + vx * t) % (w - 60), int(y0 + vy * t) % (h - 60)
            img[y : y + 60, x : x + 60] = obj.astype(np.uint8)
        out.append(np.repeat(img[..., None], 3, 2))
    return out
