"""Compare IDT rows with a reference extraction (the release's own output): counts, matching, block similarities."""

import numpy as np

from .params import IDTParams


def block_slices(params: IDTParams = IDTParams()) -> dict[str, slice]:
    """Column slices of the descriptor blocks of one row: traj, hog, hof, mbhx, mbhy."""
    cells = params.nxy_cell * params.nxy_cell * params.nt_cell
    out, col = {}, 10
    for name, width in (("traj", 2 * params.track_length), ("hog", 8 * cells), ("hof", 9 * cells),
                        ("mbhx", 8 * cells), ("mbhy", 8 * cells)):
        out[name] = slice(col, col + width)
        col += width
    return out


def match_rows(ours: np.ndarray, ref: np.ndarray, tolerance: float = 2.0) -> np.ndarray:
    """One-to-one matches (m, 2) [index in ref, index in ours]: same end frame and scale, mean positions within
    ``tolerance`` pixels, closest pairs first."""
    pairs = []
    key_o: dict[tuple, list[int]] = {}
    for j, (t, s) in enumerate(zip(ours[:, 0].astype(np.int64), np.round(ours[:, 6].astype(np.float64), 3))):
        key_o.setdefault((t, s), []).append(j)
    key_r: dict[tuple, list[int]] = {}
    for i, (t, s) in enumerate(zip(ref[:, 0].astype(np.int64), np.round(ref[:, 6].astype(np.float64), 3))):
        key_r.setdefault((t, s), []).append(i)
    ri: list[int] | np.ndarray
    oj: list[int] | np.ndarray | None
    for key, ri in key_r.items():
        oj = key_o.get(key)
        if not oj:
            continue
        ri, oj = np.array(ri), np.array(oj)
        d = np.sqrt(((ref[ri, None, 1:3] - ours[None, oj, 1:3]) ** 2).sum(-1))  # (r, o)
        cand = np.argwhere(d <= tolerance)
        order = np.argsort(d[cand[:, 0], cand[:, 1]], kind="stable")
        used_r, used_o = set(), set()
        for a, b in cand[order]:
            if a in used_r or b in used_o:
                continue
            used_r.add(a)
            used_o.add(b)
            pairs.append((ri[a], oj[b]))
    return np.array(pairs, np.int64).reshape(-1, 2)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def fidelity_report(ours: np.ndarray, ref: np.ndarray, params: IDTParams = IDTParams(), tolerance: float = 2.0) -> dict:
    """Fidelity figures of ``ours`` against ``ref`` (both (N, D) rows): counts and count ratio overall and per scale,
    matched fraction of the reference (overall and per scale), and the median cosine similarity of each block on
    matched pairs (overall and per scale)."""
    pairs = match_rows(ours, ref, tolerance)
    blocks = block_slices(params)
    rep: dict = {
        "n_ours": len(ours),
        "n_ref": len(ref),
        "count_ratio": len(ours) / max(len(ref), 1),
        "matched": len(pairs) / max(len(ref), 1),
        "cosine": {},
        "per_scale": {},
    }
    for name, sl in blocks.items():
        c = _cosine(ref[pairs[:, 0], sl], ours[pairs[:, 1], sl]) if len(pairs) else np.zeros(0)
        rep["cosine"][name] = float(np.median(c)) if len(c) else float("nan")
    for s in np.unique(np.round(np.concatenate([ref[:, 6], ours[:, 6]]), 3)):
        kr = np.round(ref[:, 6].astype(np.float64), 3) == s
        ko = np.round(ours[:, 6].astype(np.float64), 3) == s
        kp = np.round(ref[pairs[:, 0], 6].astype(np.float64), 3) == s if len(pairs) else np.zeros(0, bool)
        entry: dict = {
            "n_ours": int(ko.sum()),
            "n_ref": int(kr.sum()),
            "count_ratio": float(ko.sum() / max(kr.sum(), 1)),
            "matched": float(kp.sum() / max(kr.sum(), 1)),
            "cosine": {},
        }
        for name, sl in blocks.items():
            p = pairs[kp]
            c = _cosine(ref[p[:, 0], sl], ours[p[:, 1], sl]) if len(p) else np.zeros(0)
            entry["cosine"][name] = float(np.median(c)) if len(c) else float("nan")
        rep["per_scale"][float(s)] = entry
    return rep


def format_report(rep: dict) -> str:
    """Human-readable lines of a ``fidelity_report``."""
    names = list(rep["cosine"])
    lines = [
        f"overall: ours {rep['n_ours']} ref {rep['n_ref']} ratio {rep['count_ratio']:.3f} matched {rep['matched']:.3f} "
        + " ".join(f"{k} {v:.4f}" for k, v in rep["cosine"].items())
    ]
    for s, e in rep["per_scale"].items():
        lines.append(
            f"scale {s:.3f}: ours {e['n_ours']} ref {e['n_ref']} ratio {e['count_ratio']:.3f} matched {e['matched']:.3f} "
            + " ".join(f"{k} {e['cosine'][k]:.4f}" for k in names)
        )
    return "\n".join(lines)
