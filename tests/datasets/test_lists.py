import pytest

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
