"""Bad input in a source list or folder: every line ends as an entry (usable, or refused with a reason) or as a skipped
line with its reason; nothing raises but a list that cannot be read at all, and every id stays one safe path component."""

import os
import re

import pytest

from idtprior.datasets.lists import ListFormatError, list_source, printable, within_roots
from idtprior.storage.fingerprint import MAX_ID_LENGTH, sanitize_id

SAFE_ID = re.compile(r"[A-Za-z0-9._-]+")


def _safe(entries) -> None:
    ids = [e.video_id for e in entries]
    assert len(set(ids)) == len(ids)
    for e in entries:
        assert SAFE_ID.fullmatch(e.video_id) and len(e.video_id) <= MAX_ID_LENGTH and not e.video_id.startswith(".")
        for text in (e.path, e.label, e.split, e.error):
            text.encode("utf-8")  # storable in the manifest (raises on a surrogate escape)
            assert "\x00" not in text


def test_path_list_every_kind_of_bad_line(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"a")
    (tmp_path / "outside.mp4").write_bytes(b"o")
    long_name = "x" * 5000 + ".mp4"
    lst = tmp_path / "videos.txt"
    lst.write_bytes(b"\xef\xbb\xbf# a comment after a BOM\n"
                    b"   \n"
                    b"a.mp4\n"
                    b"a.mp4\r\n"  # the same file twice (one line with a CRLF ending)
                    + str(videos / "a.mp4").encode() + b"\n"  # absolute
                    b"../outside.mp4\n"  # reaches out of the list's folder
                    + long_name.encode() + b"\n"
                    b"nul\x00byte.mp4\n"
                    b"caf\xe9.mp4\n"  # latin-1, not UTF-8
                    b"/\n")
    listing = list_source(lst, video_root=videos)
    _safe(listing.entries)
    by_path = {e.path: e for e in listing.entries}
    a = str((videos / "a.mp4").resolve())
    assert sorted(e.video_id for e in listing.entries if e.path == a) == ["a", "a-1", sanitize_id(str(videos / "a"))]
    assert by_path[str((tmp_path / "outside.mp4").resolve())].error == ""  # no restriction without allowed_roots
    long = [e for e in listing.entries if e.path.endswith(long_name)]
    assert len(long) == 1 and long[0].error == ""  # the probe says why (name too long); listing it is not an error
    assert len(long[0].video_id) == MAX_ID_LENGTH
    (nul,) = [e for e in listing.entries if "\\x00" in e.path]
    assert nul.path == "nul\\x00byte.mp4" and "NUL byte" in nul.error
    (latin,) = [e for e in listing.entries if "caf" in e.path]
    assert latin.path.endswith("caf\\xe9.mp4") and "not UTF-8" in latin.error
    assert len(listing.entries) == 8 and by_path["/"].error == ""  # a folder: refused by the probe, with a reason
    assert [(s.where, s.reason) for s in listing.skipped] == [(f"{lst} line 1", "comment"), (f"{lst} line 2",
                                                                                              "blank line")]


def test_allowed_roots_refuse_what_resolves_outside(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"s")
    (inside / "ok.mp4").write_bytes(b"k")
    (inside / "link.mp4").symlink_to(outside / "secret.mp4")  # inside by name, outside once resolved
    lst = inside / "list.txt"
    lst.write_text("ok.mp4\nlink.mp4\n../outside/secret.mp4\n")
    entries = {e.video_id: e for e in list_source(lst, allowed_roots=[str(inside)]).entries}
    assert entries["ok"].error == ""
    assert entries["link"].error.startswith(f"{outside / 'secret.mp4'} is outside ingest.allowed_roots")
    assert "outside ingest.allowed_roots" in entries["outside__secret"].error
    assert within_roots(inside / "sub" / ".." / "ok.mp4", [str(inside)])
    assert not within_roots(tmp_path / "inside2" / "x.mp4", [str(inside)])  # a prefix of the name is not a parent


def test_folder_lists_dangling_and_looping_links_and_unusual_names(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "good.mp4").write_bytes(b"g")
    (src / "sub" / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    (src / "loop.mp4").symlink_to(src / "loop.mp4")
    (src / os.fsdecode(b"caf\xe9.avi")).write_bytes(b"c")
    (src / ".hidden.mp4").write_bytes(b"h")
    (src / "notes.txt").write_text("not a video")
    listing = list_source(src)
    _safe(listing.entries)
    entries = {e.video_id: e for e in listing.entries}
    assert sorted(entries) == ["caf_", "good", "loop", "sub__dangling"]
    assert entries["good"].error == ""
    assert entries["sub__dangling"].error == f"dangling symlink to {tmp_path / 'gone.mp4'}, which does not exist"
    assert entries["sub__dangling"].path == str(src / "sub" / "dangling.mp4")
    assert "cannot be resolved" in entries["loop"].error
    assert "not UTF-8" in entries["caf_"].error and entries["caf_"].path.endswith("caf\\xe9.avi")
    assert listing.skipped == []


def test_kinetics_rows_with_nul_and_latin1_fail_alone(tmp_path):
    root = tmp_path / "clips"
    (root / "abseiling").mkdir(parents=True)
    (root / "abseiling" / "aaa_000001_000011.mp4").write_bytes(b"x")
    csv = tmp_path / "k.csv"
    csv.write_bytes(b"label,youtube_id,time_start,time_end,split\n"
                    b"abseiling,aaa,1,11,train\n"
                    b"# a comment row\n"
                    b"abseiling,b\x00b,2,12,train\n"
                    b"caf\xe9,ccc,3,13,train\n"
                    b"abseiling,,4,14,train\n")
    listing = list_source(csv, video_root=root)
    _safe(listing.entries)
    errors = {e.video_id: e.error for e in listing.entries}
    assert errors["aaa_000001_000011"] == ""
    assert "NUL byte" in errors["b_b_000002_000012"] and "not UTF-8" in errors["ccc_000003_000013"]
    assert [(s.where.rsplit(" ", 2)[-1], s.reason) for s in listing.skipped] == [("3", "comment"),
                                                                                 ("6", "no youtube_id")]
    csv.write_bytes(b"label,youtube_id,time_start,time_end\nabseiling,aaa\n")  # a short row breaks the format
    with pytest.raises(ListFormatError, match=r"k.csv line 2: 2 of the header's 4 fields"):
        list_source(csv, video_root=root)


def test_a_source_that_cannot_be_opened_is_one_message(tmp_path):
    for source in (tmp_path / ("y" * 5000), tmp_path / "nul\x00.txt", tmp_path / "missing.txt"):
        with pytest.raises(ListFormatError, match="video source") as e:
            list_source(source)
        assert "\x00" not in str(e.value) and len(str(e.value)) < 6000


def test_sanitize_id_takes_any_text():
    for raw in ("a\x00b", os.fsdecode(b"caf\xe9"), "\udc00" * 300, "../" * 10, "", "/", "\x00" * 3):
        vid = sanitize_id(raw)
        assert SAFE_ID.fullmatch(vid) and len(vid) <= MAX_ID_LENGTH and not vid.startswith(".")
    assert printable("a\x00b\n" + os.fsdecode(b"\xe9")) == "a\\x00b\\x0a\\xe9"
    assert printable("z" * 1000, 100) == "z" * 50 + "..." + "z" * 50
