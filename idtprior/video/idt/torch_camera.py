"""Camera motion for the torch backend (issue 16): a batched RANSAC homography over many frame pairs at once, and the
homography's displacement field.

Per pair ``b``, its matches ``src[b, :n_b] -> dst[b, :n_b]`` (padded to one length): ``hypotheses`` seeded draws of 4
matches, each solved exactly (the 8x8 linear system of the direct linear transform with ``h33 = 1``), scored by the
number of matches whose forward reprojection error is below ``ransac_threshold`` pixels (OpenCV's RANSAC criterion),
and the best one's inliers refitted by normalised least squares (Hartley's DLT, the smallest right singular vector),
then polished by Levenberg-Marquardt on their reprojection error, as OpenCV does.
Where a pair has fewer than ``max(min_matches, 4)`` matches, or no hypothesis is finite, the identity, as the CPU
path's ``estimate_homography``. The draws differ from OpenCV's: the test bounds the difference in pixels.
"""

import torch

from .params import IDTParams


def _apply(H: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """``H (..., 3, 3)`` applied to ``pts (..., n, 2)`` -> ``(..., n, 2)``."""
    x = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ H.transpose(-1, -2)
    return x[..., :2] / x[..., 2:3]


def _four_point(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Exact homographies ``(..., 3, 3)`` through 4 correspondences ``src, dst (..., 4, 2)`` (float64; NaN where the
    points are degenerate)."""
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    A = torch.cat([rows_u, rows_v], -2)  # (..., 8, 8)
    b = torch.cat([u, v], -1)[..., None]
    h, info = torch.linalg.solve_ex(A, b)
    h = torch.where((info == 0)[..., None, None], h, torch.full_like(h, float("nan")))
    return torch.cat([h[..., 0], torch.ones_like(h[..., :1, 0])], -1).reshape(*h.shape[:-2], 3, 3)


def _normaliser(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Hartley's similarity ``(B, 3, 3)``: the weighted points ``p (B, n, 2)`` (weights ``w (B, n)``) centred, at mean
    distance sqrt(2)."""
    total = w.sum(1).clamp_min(1.0)
    c = (p * w[..., None]).sum(1) / total[:, None]
    d = ((p - c[:, None]).norm(dim=-1) * w).sum(1) / total
    s = (2.0**0.5) / d.clamp_min(1e-12)
    T = torch.zeros(p.shape[0], 3, 3, dtype=p.dtype, device=p.device)
    T[:, 0, 0], T[:, 1, 1], T[:, 2, 2] = s, s, 1.0
    T[:, 0, 2], T[:, 1, 2] = -s * c[:, 0], -s * c[:, 1]
    return T


def _least_squares(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The DLT homography ``(B, 3, 3)`` of the matches with weight ``w (B, n)`` (1: inlier, 0: not used)."""
    Ts, Td = _normaliser(src, w), _normaliser(dst, w)
    s, d = _apply(Ts, src), _apply(Td, dst)
    x, y, u, v = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    ru = torch.stack([-x, -y, -one, zero, zero, zero, u * x, u * y, u], -1)
    rv = torch.stack([zero, zero, zero, -x, -y, -one, v * x, v * y, v], -1)
    A = torch.cat([ru * w[..., None], rv * w[..., None]], 1)  # (B, 2n, 9)
    _, vecs = torch.linalg.eigh(A.transpose(1, 2) @ A)  # ascending eigenvalues
    Hn = vecs[..., 0].reshape(-1, 3, 3)
    return torch.linalg.inv(Td) @ Hn @ Ts


def _refine(H: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Levenberg-Marquardt on the forward reprojection error of the matches with weight ``w (B, n)`` (the inliers),
    from ``H (B, 3, 3)`` normalised to ``h33 = 1``, as OpenCV polishes its RANSAC result."""
    h = (H / H[:, 2:3, 2:3]).reshape(-1, 9)[:, :8].clone()
    x, y = src[..., 0], src[..., 1]
    lam = torch.full((len(h),), 1e-3, dtype=h.dtype, device=h.device)

    def residuals(h):
        den = h[:, 6:7] * x + h[:, 7:8] * y + 1.0
        u = (h[:, 0:1] * x + h[:, 1:2] * y + h[:, 2:3]) / den
        v = (h[:, 3:4] * x + h[:, 4:5] * y + h[:, 5:6]) / den
        return u, v, den

    def cost(h):
        u, v, _ = residuals(h)
        return (w * ((u - dst[..., 0]) ** 2 + (v - dst[..., 1]) ** 2)).sum(1)

    for _ in range(iters):
        u, v, den = residuals(h)
        zero = torch.zeros_like(x)
        ju = torch.stack([x / den, y / den, 1 / den, zero, zero, zero, -u * x / den, -u * y / den], -1)
        jv = torch.stack([zero, zero, zero, x / den, y / den, 1 / den, -v * x / den, -v * y / den], -1)
        J = torch.cat([ju, jv], 1) * torch.cat([w, w], 1)[..., None].sqrt()  # (B, 2n, 8)
        r = torch.cat([u - dst[..., 0], v - dst[..., 1]], 1) * torch.cat([w, w], 1).sqrt()
        A = J.transpose(1, 2) @ J
        g = J.transpose(1, 2) @ r[..., None]
        damp = lam[:, None, None] * torch.diag_embed(torch.diagonal(A, dim1=1, dim2=2))
        step, info = torch.linalg.solve_ex(A + damp, -g)
        trial = h + step[..., 0]
        better = (info == 0) & torch.isfinite(trial).all(1) & (cost(trial) < cost(h))
        h = torch.where(better[:, None], trial, h)
        lam = torch.where(better, lam * 0.1, lam * 10.0)
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).reshape(-1, 3, 3)


def estimate_homographies(src: torch.Tensor, dst: torch.Tensor, counts: torch.Tensor, params: IDTParams,
                          hypotheses: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Homographies ``(B, 3, 3)`` float64 mapping frame t-1 to t of each pair, from ``src, dst (B, m, 2)`` whose first
    ``counts[b]`` rows are pair b's matches, and each pair's inlier count ``(B,)``."""
    src, dst = src.to(torch.float64), dst.to(torch.float64)
    B, m, _ = src.shape
    dev = src.device
    counts = counts.to(dev)
    eye = torch.eye(3, dtype=torch.float64, device=dev).expand(B, 3, 3).clone()
    usable = counts >= max(params.min_matches, 4)
    if m < 4 or not bool(usable.any()):
        return eye, torch.zeros(B, dtype=torch.int64, device=dev)
    g = torch.Generator(device="cpu").manual_seed(seed)
    # 4 distinct matches per hypothesis, drawn uniformly among each pair's own: sort random keys, invalid rows last
    keys = torch.rand(B, hypotheses, m, generator=g).to(dev)
    valid = torch.arange(m, device=dev)[None] < counts[:, None]  # (B, m)
    keys = torch.where(valid[:, None], keys, torch.full_like(keys, 2.0))
    idx = keys.argsort(-1)[..., :4, None].expand(-1, -1, -1, 2)  # (B, K, 4, 2)

    def take(p: torch.Tensor) -> torch.Tensor:  # (B, m, 2) -> each hypothesis' 4 matches (B, K, 4, 2)
        return torch.gather(p[:, None].expand(B, hypotheses, m, 2), 2, idx)

    H = _four_point(take(src), take(dst))  # (B, K, 3, 3)
    err = (_apply(H, src[:, None]) - dst[:, None]).pow(2).sum(-1)  # (B, K, m)
    inlier = (err < params.ransac_threshold**2) & valid[:, None]
    score = inlier.sum(-1)
    score = torch.where(torch.isfinite(H).flatten(2).all(-1), score, torch.full_like(score, -1))
    best = score.argmax(1)  # (B,)
    mask = inlier[torch.arange(B, device=dev), best].to(torch.float64)  # (B, m)
    refit = _least_squares(src, dst, mask)
    refit = _refine(refit / refit[:, 2:3, 2:3], src, dst, mask)
    ok = usable & (mask.sum(1) >= 4) & torch.isfinite(refit).flatten(1).all(1)
    H = torch.where(ok[:, None, None], refit, eye)
    return H, torch.where(ok, mask.sum(1).to(torch.int64), torch.zeros_like(counts))


def homography_flow(H: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Displacement fields ``(B, 2, h, w)`` float32 of ``H (B, 3, 3)``: H(x) - x at every pixel
    (``camera.homography_flow``)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=H.device),
                            torch.arange(w, dtype=torch.float64, device=H.device), indexing="ij")
    Hf = H.to(torch.float64)  # in float64 then rounded, as the CPU path's numpy arithmetic
    hh = [[Hf[:, i, j, None, None] for j in range(3)] for i in range(3)]
    den = hh[2][0] * xs + hh[2][1] * ys + hh[2][2]
    u = (hh[0][0] * xs + hh[0][1] * ys + hh[0][2]) / den - xs
    v = (hh[1][0] * xs + hh[1][1] * ys + hh[1][2]) / den - ys
    return torch.stack([u, v], 1).to(torch.float32)
