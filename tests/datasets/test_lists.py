import os
from pathlib import Path

import pytest

from idtprior.datasets import lists
from idtprior.datasets.lists import ListFormatError, detect_format, read_labels, read_source


def test_kinetics_csv(tmp_path):
    (tmp_path / "clips" / "abseiling").mkdir(parents=True)
    (tmp_path / "clips" / "abseiling" / "abc123_000010_000020.mp4").write_bytes(b"x")
    csv = tmp_path / "k400.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc123,10,20,train\n"
                   "air drumming,../../x,0,10,val\n")
    assert detect_format(csv) == "kinetics_csv"
    b, a = read_source(csv, video_root=tmp_path / "clips")  # sorted by id
    assert (a.video_id, a.label, a.split) == ("abc123_000010_000020", "abseiling", "train")
    assert a.path == str((tmp_path / "clips" / "abseiling" / "abc123_000010_000020.mp4").resolve())
    assert b.video_id == "x_000000_000010" and b.label == "air drumming"  # no id escapes the workspace


def kinetics_tree(root: Path) -> dict[str, str]:
    """Clips in every layout a Kinetics copy comes in; returns {stem: label}, listed in a CSV by the tests."""
    files = {
        "train/abseiling/aaa_000001_000011.mp4": "abseiling",  # root/<split>/<label>/
        "val/air drumming/bbb_000002_000012.mkv": "air drumming",  # split layout, label with a space, other extension
        "train/air drumming/ccc_000003_000013.webm": "air drumming",
        "abseiling/ddd_000004_000014.mp4": "abseiling",  # root/<label>/ wins over the split copy below
        "val/abseiling/ddd_000004_000014.mp4": "abseiling",
        "air_drumming/eee_000005_000015.avi": "air drumming",  # root/<label with _>/
        "fff_000006_000016.mp4": "abseiling",  # flat
        "val/zz/ggg_000007_000017.mp4": "abseiling",  # under another label's folder: the sorted first */*/ match
        "train/zz/ggg_000007_000017.avi": "abseiling",
        "abseiling/hhh_000008_000018.txt": "abseiling",  # not a video extension at depth 1: falls through to */*/
        "test/x/hhh_000008_000018.json": "abseiling",
    }
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    stems = {Path(rel).stem: label for rel, label in files.items()}
    stems["iii_000009_000019"] = "abseiling"  # listed, absent on disk
    # links resolve to their targets: a linked label folder, a linked clip, a dangling link (glob yields it, exists not)
    (root / "linked").symlink_to(root / "train" / "abseiling", target_is_directory=True)
    stems["aaa_000001_000011"] = "linked"
    (root / "abseiling" / "kkk_000010_000020.mp4").symlink_to(root / "fff_000006_000016.mp4")
    stems["kkk_000010_000020"] = "abseiling"
    (root / "val" / "zz" / "lll_000011_000021.mp4").symlink_to(root / "nowhere.mp4")
    stems["lll_000011_000021"] = "abseiling"
    return stems


def write_kinetics_csv(path: Path, stems: dict[str, str]) -> Path:
    rows = [f"{label},{stem[:3]},{int(stem[4:10])},{int(stem[11:])},train" for stem, label in stems.items()]
    path.write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n")
    return path


def test_kinetics_split_layout_resolves_from_one_listing(tmp_path, monkeypatch):
    root = tmp_path / "k400"
    stems = kinetics_tree(root)
    csv = write_kinetics_csv(tmp_path / "k400.csv", stems)
    # the reference: the per-row disk probe (exists() per candidate, then a glob of root/*/*/) the index replaces
    expected = {stem: lists._probe_kinetics_file(root, label, stem) for stem, label in stems.items()}
    assert expected == {s: str((root / rel).resolve()) for s, rel in {
        "aaa_000001_000011": "train/abseiling/aaa_000001_000011.mp4",
        "bbb_000002_000012": "val/air drumming/bbb_000002_000012.mkv",
        "ccc_000003_000013": "train/air drumming/ccc_000003_000013.webm",
        "ddd_000004_000014": "abseiling/ddd_000004_000014.mp4",
        "eee_000005_000015": "air_drumming/eee_000005_000015.avi",
        "fff_000006_000016": "fff_000006_000016.mp4",
        "ggg_000007_000017": "train/zz/ggg_000007_000017.avi",
        "hhh_000008_000018": "test/x/hhh_000008_000018.json",
        "kkk_000010_000020": "fff_000006_000016.mp4",
        "lll_000011_000021": "nowhere.mp4",
    }.items()} | {"iii_000009_000019": str(root / "abseiling" / "iii_000009_000019.mp4")}

    # the index lists each folder of the two-level tree once, and no row touches the disk under the root
    listed = []
    real_scandir, real_exists, real_glob = os.scandir, Path.exists, Path.glob

    def counting_scandir(path):
        listed.append(os.fspath(path))
        return real_scandir(path)

    def guarded(real):
        def probe(self, *args, **kwargs):
            if self.is_relative_to(root):
                raise AssertionError(f"per-row disk probe of {self}")
            return real(self, *args, **kwargs)
        return probe

    monkeypatch.setattr(os, "scandir", counting_scandir)
    monkeypatch.setattr(Path, "exists", guarded(real_exists))
    monkeypatch.setattr(Path, "glob", guarded(real_glob))
    monkeypatch.setattr(Path, "rglob", guarded(Path.rglob))
    entries = read_source(csv, video_root=root)
    monkeypatch.undo()
    assert {e.video_id: e.path for e in entries} == expected
    folders = [d for d, _, _ in os.walk(root, followlinks=True) if len(Path(d).relative_to(root).parts) <= 2]
    assert len(folders) == 14  # root, 6 folders below it (a link among them), 7 below those
    assert sorted(listed) == sorted(folders)  # each listed exactly once, whatever the number of rows


def test_kinetics_csv_errors_name_the_line(tmp_path):
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end\na,b,zero,1\n")
    with pytest.raises(ListFormatError, match=r"k.csv line 2: bad time_start/time_end 'zero'/'1'"):
        read_source(csv, fmt="kinetics_csv")


def test_ucf101_split_reads_both_lists(tmp_path):
    (tmp_path / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c02.avi\n\n")
    entries = read_source(tmp_path / "trainlist01.txt", video_root=tmp_path / "UCF-101")
    assert [(e.video_id, e.label, e.split) for e in entries] == [
        ("v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup", "train"), ("v_Archery_g01_c02", "Archery", "test")]
    assert entries[1].path.endswith("UCF-101/Archery/v_Archery_g01_c02.avi")


def test_hmdb51_split_files(tmp_path):
    (tmp_path / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    entries = read_source(tmp_path, video_root=tmp_path / "hmdb")
    assert [(e.video_id, e.label, e.split) for e in entries] == [("a", "brush_hair", "train"),
                                                                 ("b", "brush_hair", "test")]
    (tmp_path / "bad_test_split1.txt").write_text("x.avi 7\n")
    with pytest.raises(ListFormatError, match=r"bad_test_split1.txt line 1: .*'x.avi 7'"):
        read_source(tmp_path / "bad_test_split1.txt")


def test_path_list_and_labels(tmp_path):
    lst = tmp_path / "videos.txt"
    lst.write_text("# comment\nsub/a.mp4\n/abs/b.mp4\nsub/a.mp4\n")
    ids = [e.video_id for e in read_source(lst)]
    assert ids == ["abs__b", "sub__a", "sub__a-1"]
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label,split\nsub/a,run,train\n")
    assert read_labels(labels) == {"sub__a": ("run", "train")}
    with pytest.raises(ListFormatError, match="does not exist"):
        read_source(tmp_path / "nope.txt")
