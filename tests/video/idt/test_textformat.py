import gzip
import io

import numpy as np
import pytest

from idtprior.video.idt.textformat import (
    format_idt_rows,
    read_boxes,
    read_idt_text,
    write_boxes,
    write_idt_text,
)


def random_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.random((n, 436)).astype(np.float32)
    rows[:, 0] = rng.integers(15, 500, n)
    rows[:, 1:3] *= 300
    rows[:, 10:40] -= 0.5
    return rows


def test_text_round_trip_is_exact(tmp_path):
    rows = random_rows(7)
    path = tmp_path / "x.txt.gz"
    write_idt_text(path, rows)
    back = read_idt_text(path)
    # printed precision: 6 decimals for info and shape, 7 for descriptors
    np.testing.assert_allclose(back[:, :40], rows[:, :40], atol=5e-7 + 1e-6 * np.abs(rows[:, :40]).max())
    np.testing.assert_allclose(back[:, 40:], rows[:, 40:], atol=5.1e-8)
    # what was read writes back to the same bytes, and reads back to the same numbers
    with gzip.open(path, "rt") as f:
        text = f.read()
    assert format_idt_rows(back) == text
    np.testing.assert_array_equal(read_idt_text(io.StringIO(format_idt_rows(back))), back)


def test_line_layout_matches_release():
    line = format_idt_rows(random_rows(1))
    fields = line.split("\t")
    assert line.endswith("\t\n") and len(fields) == 437
    assert "." not in fields[0]
    assert all(len(f.split(".")[1]) == 6 for f in fields[1:40])
    assert all(len(f.split(".")[1]) == 7 for f in fields[40:436])


def test_reference_file_round_trips_byte_exact(kth_dir):
    path = kth_dir / "person01_boxing_d1.idt.txt.gz"
    rows = read_idt_text(path)
    assert rows.shape == (2001, 436)
    with gzip.open(path, "rt") as f:
        assert format_idt_rows(rows) == f.read()


def test_empty_and_bad_files(tmp_path):
    (tmp_path / "e.txt").write_text("")
    assert read_idt_text(tmp_path / "e.txt").shape == (0, 436)
    (tmp_path / "b.txt").write_text("1\t2\t3\n1\t2\n")
    with pytest.raises(ValueError, match="line 2"):
        read_idt_text(tmp_path / "b.txt")


def test_boxes_round_trip_and_multiline_form(tmp_path):
    boxes = {0: np.array([[1, 2, 30, 40, 0.9], [5, 6, 7, 8, 0.5]], np.float32), 3: np.zeros((0, 5), np.float32)}
    write_boxes(tmp_path / "bb.txt", boxes)
    back = read_boxes(tmp_path / "bb.txt")
    assert sorted(back) == [0, 3]
    np.testing.assert_array_equal(back[0], boxes[0])
    assert back[3].shape == (0, 5)
    multi = read_boxes(io.StringIO("2\n1 2 3 4 0.5\n10 20 30 40 1\n5 0 0 1 1 0.1\n"))
    assert multi[2].shape == (2, 5) and multi[5].shape == (1, 5)
    with pytest.raises(ValueError, match="line 1"):
        read_boxes(io.StringIO("1 2 3 4 0.5\n"))


def test_streamed_blocks_write_the_same_bytes_as_one_array_at_any_gzip_level(tmp_path):
    rows = random_rows(7)
    whole, streamed, fast = tmp_path / "whole.txt.gz", tmp_path / "streamed.txt.gz", tmp_path / "fast.txt.gz"
    assert write_idt_text(whole, rows) == 7
    assert write_idt_text(streamed, iter([rows[:3], rows[3:3], rows[3:]])) == 7
    assert whole.read_bytes() == streamed.read_bytes()  # no name or time in the header: deterministic
    write_idt_text(fast, rows, compresslevel=1)
    assert gzip.decompress(fast.read_bytes()) == gzip.decompress(whole.read_bytes()) == format_idt_rows(rows).encode()
    assert fast.read_bytes()[8] == 4 and whole.read_bytes()[8] == 0  # gzip's XFL byte: 4 = fastest, 0 = level 2-8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.txt.gz", "streamed.txt.gz", "whole.txt.gz"]


def test_a_failure_while_streaming_leaves_no_file_behind(tmp_path):
    out = tmp_path / "o.txt.gz"

    def blocks():
        yield random_rows(3)
        raise ValueError("video v.avi: decode error at frame 9")

    with pytest.raises(ValueError, match="frame 9"):
        write_idt_text(out, blocks())
    assert list(tmp_path.iterdir()) == []
