import base64

import numpy as np
import pytest

from idtprior.evaluation.figures import (
    PALETTE,
    PLOT_MARGINS,
    cluster_montage,
    data_uri_bytes,
    decode_png,
    draw_tracks,
    encode_png,
    label_text_width,
    largest_clusters,
    line_plot,
    markdown_image,
    middle_frame,
    montage,
    png_data_uri,
    training_curves,
)
from idtprior.models import ArrayClipSource


def _frames(n: int, h: int = 10, w: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_montage_grid_size_and_cells_equal_the_frames():
    rows = [_frames(3, seed=0), _frames(2, seed=1)]
    pad = 2
    img = montage(rows, pad=pad, background=255)
    assert img.shape == (2 * (10 + pad) + pad, 3 * (12 + pad) + pad, 3) and img.dtype == np.uint8
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            y, x = pad + r * (10 + pad), pad + c * (12 + pad)
            assert np.array_equal(img[y : y + 10, x : x + 12], frame), (r, c)
    y, x = pad + 1 * (10 + pad), pad + 2 * (12 + pad)
    assert (img[y : y + 10, x : x + 12] == 255).all()  # the short row's missing cell is background
    mask = np.ones(img.shape[:2], bool)  # everything outside the cells is padding
    for r, row in enumerate(rows):
        for c in range(len(row)):
            mask[pad + r * 12 : pad + r * 12 + 10, pad + c * 14 : pad + c * 14 + 12] = False
    assert (img[mask] == 255).all()


def test_montage_with_row_labels_and_resized_cells():
    rows = [_frames(2, h=20, w=20), _frames(2, h=20, w=20, seed=1)]
    img = montage(rows, cell=(10, 10), pad=1, row_labels=["first", "second"], label_width=50)
    assert img.shape == (2 * 11 + 1, 50 + 2 * 11 + 1, 3)
    cell = img[1:11, 51:61].astype(int)  # a 2x2 area average of the 20x20 frame
    expected = rows[0][0].reshape(10, 2, 10, 2, 3).mean((1, 3))
    assert np.abs(cell - expected).max() <= 1
    assert (img[:, :50] < 128).any()  # label text drawn in the margin
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        montage(rows, row_labels=["x"])


def test_largest_clusters_are_ordered_by_size_with_seeded_members():
    assignments = np.array([3] * 5 + [1] * 7 + [0] * 2 + [2] * 5 + [-1] * 4)
    got = largest_clusters(assignments, n_clusters=3, per_cluster=4, seed=0)
    assert [k for k, _ in got] == [1, 2, 3]  # 7, then the ties 5 and 5 by label
    for k, members in got:
        assert len(members) == 4 and (assignments[members] == k).all()
        assert np.array_equal(members, np.sort(members))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, largest_clusters(assignments, 3, 4, seed=0)))
    others = [largest_clusters(assignments, 3, 4, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(o[0][1], got[0][1]) for o in others)
    last_k, last_members = largest_clusters(assignments, 10, 4)[-1]  # all 4 clusters; the smallest keeps its 2
    assert last_k == 0 and last_members.tolist() == [12, 13]


def test_draw_tracks_draws_green_polylines_ending_in_a_red_dot():
    frame = np.zeros((20, 30, 3), np.uint8)
    track = np.array([[2.0, 5.0], [10.0, 5.0], [20.0, 5.0]])
    img = draw_tracks(frame, [track / 2], scale=2.0)
    assert not frame.any()  # a copy
    green = (img[..., 1] > 40) & (img[..., 1] > img[..., 0]) & (img[..., 1] > img[..., 2])
    assert green[5, 3:18].all() and not green[10:].any()
    assert img[5, 20, 0] > 150 and img[5, 20, 0] > img[5, 20, 1]  # red end point
    with pytest.raises(ValueError, match=r"\(3,\)"):
        draw_tracks(frame, [np.zeros(3)])


def test_cluster_montage_rows_are_the_clusters_middle_frames_with_tracks():
    # video i: frame t is filled with the value 10 * t + i; the middle frame of 9 frames is t = 4
    videos = [np.full((9, 16, 16, 3), 0, np.uint8) + (10 * np.arange(9) + i).astype(np.uint8)[:, None, None, None]
              for i in range(6)]
    src = ArrayClipSource(videos)
    assert (middle_frame(src, 2) == 42).all()
    assignments = np.array([0, 1, 1, 1, 0, 2])
    img = cluster_montage(src, assignments, n_clusters=2, per_cluster=3, cell=(16, 16), label_width=120)
    pad, left = 2, 120
    assert img.shape == (2 * 18 + 2, left + 3 * 18 + 2, 3)
    for c, i in enumerate([1, 2, 3]):  # cluster 1 first: 3 members
        x = left + pad + c * 18
        assert (img[pad : pad + 16, x : x + 16] == 40 + i).all()
    tracks = {1: [np.array([[1.0, 8.0], [14.0, 8.0]])]}
    drawn = cluster_montage(src, assignments, n_clusters=2, per_cluster=3, cell=(16, 16), tracks=tracks,
                            label_width=120)
    cell = drawn[pad : pad + 16, left + pad : left + pad + 16].astype(int)
    assert (cell[8, 2:13, 1] > 41).all() and (cell[:6] == 41).all()  # the track of video 1, the rest untouched
    assert np.array_equal(drawn[:, left + pad + 18 :], img[:, left + pad + 18 :])


def test_cluster_montage_labels_are_never_cut():
    """By default the label column fits the longest row label (cluster, size and most common label) in full."""
    src = ArrayClipSource([np.zeros((3, 16, 16, 3), np.uint8) for _ in range(6)])
    assignments = np.array([0, 1, 1, 1, 0, 2])
    names = ["BackgroundAnimationsOfSomeLength", "Bouncing", "BackgroundAnimationsOfSomeLength", "Bouncing",
             "BackgroundAnimationsOfSomeLength", "Pan"]
    img = cluster_montage(src, assignments, n_clusters=2, per_cluster=3, cell=(16, 16), labels=names)
    left = img.shape[1] - (3 * 18 + 2)
    longest = "#0 n=2 BackgroundAnimationsOfSomeLength"
    assert left >= label_text_width(longest) + 8  # the text is drawn from x=4 and cut at left - 8
    ink = (img[:, :left] < 128).any(axis=(0, 2))
    assert ink[: label_text_width(longest)].sum() > 0.5 * label_text_width(longest)  # drawn across its full width
    assert cluster_montage(src, assignments, n_clusters=2, per_cluster=3, cell=(16, 16)).shape[1] == 96 + 3 * 18 + 2


def _colour_mask(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (img == np.array(colour, np.uint8)).all(-1)


def test_line_plot_draws_an_increasing_series_rising_across_the_plot_area():
    w, h = 300, 200
    img = line_plot({"knn": [0.1, 0.2, 0.35, 0.5, 0.9]}, "knn", size=(w, h))
    assert img.shape == (h, w, 3)
    m = PLOT_MARGINS
    x0, x1, y0, y1 = m["left"], w - 1 - m["right"], m["top"], h - 1 - m["bottom"]
    mask = _colour_mask(img, PALETTE[0])
    mask[: y0 - 3] = False  # the legend's swatch lives in the top margin
    ys, xs = np.nonzero(mask)
    assert xs.min() == x0 - 2 and xs.max() == x1 + 2  # points are dots of radius 2 at the area's edges
    assert ys.min() == y0 - 2 and ys.max() == y1 + 2
    columns = sorted(set(xs.tolist()))
    centre = [ys[xs == c].mean() for c in columns]
    assert all(b <= a + 2.5 for a, b in zip(centre, centre[1:]))  # image y falls as the value rises
    assert centre[0] - centre[-1] > 0.8 * (y1 - y0)


def test_line_plot_log_scale_and_gaps():
    w, h = 300, 200
    lr = [0.1, 0.01, 0.001, 0.0001]
    img = line_plot({"lr": lr}, size=(w, h), log_y=True)
    m = PLOT_MARGINS
    x0, x1, y0, y1 = m["left"], w - 1 - m["right"], m["top"], h - 1 - m["bottom"]
    xs = [int(round(x0 + i / 3 * (x1 - x0))) for i in range(4)]
    ys = [int(round(y0 + i / 3 * (y1 - y0))) for i in range(4)]  # equal steps per decade
    for x, y in zip(xs, ys):
        assert _colour_mask(img[y - 1 : y + 2, x - 1 : x + 2], PALETTE[0]).all()
    gap = line_plot({"a": [1.0, float("nan"), 3.0]}, size=(w, h))
    mid = (x0 + x1) // 2
    assert not _colour_mask(gap[y0 - 3 : y1 + 3, mid - 5 : mid + 5], PALETTE[0]).any()  # nothing drawn at the nan


def test_training_curves_give_one_png_per_metric_present():
    history = [{"epoch": e, "loss": 2.0 / (e + 1), "val_loss": 2.5 / (e + 1), "lr": 0.1 * 0.1 ** (e // 2),
                "knn_acc": 0.2 + 0.1 * e} for e in range(5)]
    pngs = training_curves(history, size=(320, 200))
    assert set(pngs) == {"loss", "lr", "knn"}
    for png in pngs.values():
        assert decode_png(png).shape == (200, 320, 3)
    no_knn = training_curves([{k: v for k, v in h.items() if k != "knn_acc"} for h in history])
    assert set(no_knn) == {"loss", "lr"}
    # a finetuning history: val_accuracy is drawn with the kNN curve, a nan-only series is left out
    ft = training_curves([{"epoch": 0, "loss": 1.0, "lr": 0.1, "val_loss": float("nan"), "val_accuracy": 0.5}])
    assert set(ft) == {"loss", "lr", "knn"}


def test_png_data_uri_round_trips_to_the_same_bytes():
    img = _frames(1, h=30, w=40)[0]
    png = encode_png(img)
    assert np.array_equal(decode_png(png), img)  # lossless, RGB kept
    uri = png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert data_uri_bytes(uri) == png
    assert base64.b64decode(uri.split(",", 1)[1]) == png
    with pytest.raises(ValueError, match="not PNG"):
        png_data_uri(b"GIF89a....")


def test_markdown_image_keeps_small_images_and_downsizes_large_ones():
    small = encode_png(_frames(1, h=20, w=30)[0])
    md = markdown_image("clusters [run 1]", small, max_bytes=10_000)
    assert md == f"![clusters (run 1)]({png_data_uri(small)})"
    noisy = _frames(1, h=300, w=400, seed=5)[0]  # incompressible: ~360 kB as PNG
    big = encode_png(noisy)
    md = markdown_image("noise", big, max_bytes=30_000)
    assert len(md) <= 30_000
    shrunk = decode_png(data_uri_bytes(md[len("![noise]("):-1]))
    assert shrunk.shape[0] < 300 and abs(shrunk.shape[1] / shrunk.shape[0] - 4 / 3) < 0.05
    with pytest.raises(ValueError, match="does not fit 60 bytes"):
        markdown_image("noise", big, max_bytes=60)
    # a lower zlib level (the stages' pictures): other bytes, the same pixels, and the downsized one still fits
    frame = _frames(1, h=120, w=160, seed=2)[0]
    fast = encode_png(frame, 6)
    assert fast != encode_png(frame) and np.array_equal(decode_png(fast), frame)
    md = markdown_image("noise", encode_png(noisy, 6), max_bytes=30_000, compression=6)
    assert len(md) <= 30_000 and decode_png(data_uri_bytes(md[len("![noise]("):-1])).shape[0] < 300
