"""segdemo.data.zipdata: safe extraction of zipped datasets, and refusal of hostile zips."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

import segdemo.data.zipdata as zipdata
from segdemo.data.base import DataError
from segdemo.data.zipdata import extract_zip


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _refuse(tmp_path: Path, zpath: Path, match: str, **kw) -> None:
    """Extraction must fail with `match` and leave nothing behind, inside or outside dest."""
    before = _files(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=match):
        extract_zip(zpath, dest, **kw)
    assert _files(tmp_path) == before  # nothing written anywhere (dest itself removed too)


DATASET = [("images/a.png", b"img-a"), ("masks/a.png", b"mask-a"), ("images/b.png", b"img-b")]


def test_plain_dataset_zip(tmp_path):
    z = _zip(
        tmp_path / "d.zip",
        DATASET
        + [
            ("__MACOSX/images/._a.png", b"x"),
            (".hidden", b"x"),
            ("images/.DS_Store", b"x"),
            ("Thumbs.db", b"x"),
        ],
    )
    skipped: list[str] = []
    root = extract_zip(z, tmp_path / "dest", skipped=skipped)
    assert root == (tmp_path / "dest").resolve()
    assert _files(root) == {"images", "masks", "images/a.png", "images/b.png", "masks/a.png"}
    assert (root / "masks" / "a.png").read_bytes() == b"mask-a"
    assert sorted(skipped) == [".hidden", "Thumbs.db", "__MACOSX/images/._a.png", "images/.DS_Store"]


def test_single_top_folder_is_the_root(tmp_path):
    z = _zip(tmp_path / "d.zip", [(f"My Data/{n}", d) for n, d in DATASET])
    assert extract_zip(z, tmp_path / "dest") == (tmp_path / "dest" / "My Data").resolve()
    z2 = _zip(
        tmp_path / "d2.zip",
        [("outer/inner/train/images/a.png", b"1"), ("outer/inner/train/masks/a.png", b"2")],
    )
    assert extract_zip(z2, tmp_path / "dest2").name == "inner"
    z3 = _zip(tmp_path / "d3.zip", [("x/readme.txt", b"1"), ("y/readme.txt", b"2")])
    assert extract_zip(z3, tmp_path / "dest3") == (tmp_path / "dest3").resolve()


def test_backslash_separators_are_folders(tmp_path):
    z = _zip(tmp_path / "d.zip", [("images\\", b""), ("images\\a.png", b"1"), ("masks\\a.png", b"2")])
    root = extract_zip(z, tmp_path / "dest")
    assert (root / "images" / "a.png").read_bytes() == b"1"


@pytest.mark.parametrize(
    "name,match",
    [
        ("../evil.png", "points outside the folder"),
        ("images/../../evil.png", "points outside the folder"),
        ("..\\..\\evil.png", "points outside the folder"),
        ("/etc/evil.png", "absolute path"),
        ("\\evil.png", "absolute path"),
        ("C:/Windows/evil.png", "absolute path"),
        ("c:evil.png", "absolute path"),
        ("images/a.png:stream", "':' in its name"),
    ],
)
def test_unsafe_paths_are_refused(tmp_path, name, match):
    z = _zip(tmp_path / "d.zip", DATASET + [(name, b"evil")])
    _refuse(tmp_path, z, match)
    assert not (tmp_path.parent / "evil.png").exists()


def test_symlink_entry_is_refused(tmp_path):
    link = zipfile.ZipInfo("images/link.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "d.zip", DATASET + [(link, b"/etc/passwd")])
    _refuse(tmp_path, z, "symbolic link")


def test_encrypted_entry_is_refused(tmp_path):
    z = _zip(tmp_path / "d.zip", DATASET, method=zipfile.ZIP_STORED)
    b = bytearray(z.read_bytes())  # zipfile cannot write encrypted entries: set flag bit 0 by hand
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i != -1:
            b[i + off] |= 0x1
            i = b.find(sig, i + 4)
    z.write_bytes(bytes(b))
    assert zipfile.ZipFile(z).getinfo("masks/a.png").flag_bits & 0x1
    _refuse(tmp_path, z, "password-protected")


def test_case_colliding_names_are_refused(tmp_path):
    z = _zip(tmp_path / "d.zip", [("images/A.png", b"1"), ("images/a.png", b"2")])
    _refuse(tmp_path, z, "'images/A.png' and 'images/a.png'")
    z = _zip(tmp_path / "d2.zip", [("Images/x.png", b"1"), ("images/y.png", b"2")])
    _refuse(tmp_path, z, "clash on case-insensitive disks")
    z = _zip(tmp_path / "d3.zip", [("images", b"file"), ("images/y.png", b"2")])
    _refuse(tmp_path, z, "clash")


def test_duplicate_entry_is_refused(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        z = _zip(tmp_path / "d.zip", [("images/a.png", b"1"), ("images/a.png", b"2")])
    _refuse(tmp_path, z, "holds 'images/a.png' twice")


def test_too_many_entries_refused_before_extracting(tmp_path):
    # Stands in for a 100k-entry zip: the count is checked on the central directory, before any write.
    z = _zip(tmp_path / "many.zip", [(f"images/{i}.png", b"") for i in range(6000)], method=zipfile.ZIP_STORED)
    _refuse(tmp_path, z, "6,000 entries, more than the limit of 5,000")


def test_high_ratio_bomb_refused_from_declared_sizes(tmp_path):
    z = _zip(tmp_path / "bomb.zip", [("images/zeros.png", bytes(50_000_000))])
    assert z.stat().st_size < 200_000
    _refuse(tmp_path, z, "more than the limit of 10 MB", max_total_bytes=10_000_000)
    _refuse(tmp_path, z, "limit of 20 MB per file", max_entry_bytes=20_000_000)


def test_bytes_are_counted_while_reading(tmp_path, monkeypatch):
    """Even if the declared sizes pass, the running count stops the stream at the cap."""
    z = _zip(tmp_path / "bomb.zip", [("images/a.png", b"small"), ("images/zeros.png", bytes(50_000_000))])
    real_vet = zipdata._vet
    monkeypatch.setattr(zipdata, "_vet", lambda zn, infos, me, mt, mb, sk: real_vet(zn, infos, me, 10**12, 10**12, sk))
    _refuse(tmp_path, z, "looks like a zip bomb", max_total_bytes=3_000_000)
    _refuse(tmp_path, z, "looks like a zip bomb", max_entry_bytes=3_000_000)


def _patch_sizes(path: Path, claimed: int) -> None:
    """Make every local and central header claim `claimed` uncompressed bytes (a lying zip)."""
    b = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = b.find(sig)
        while i != -1:
            b[i + off : i + off + 4] = struct.pack("<I", claimed)
            i = b.find(sig, i + 4)
    path.write_bytes(bytes(b))


def test_lying_header_sizes_are_refused(tmp_path):
    z = _zip(tmp_path / "liar.zip", [("images/zeros.png", bytes(50_000_000))])
    _patch_sizes(z, 1000)
    assert zipfile.ZipFile(z).getinfo("images/zeros.png").file_size == 1000
    _refuse(tmp_path, z, "not a valid zip file", max_total_bytes=10_000_000)


def test_nested_archives_are_skipped(tmp_path):
    z = _zip(tmp_path / "d.zip", DATASET + [("images/more.zip", b"PK\x03\x04..."), ("backup.tar.gz", b"x")])
    skipped: list[str] = []
    root = extract_zip(z, tmp_path / "dest", skipped=skipped)
    assert not (root / "images" / "more.zip").exists() and sorted(skipped) == [
        "backup.tar.gz",
        "images/more.zip",
    ]


def test_corrupt_and_non_zip_files(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"this is not a zip at all" * 10)
    _refuse(tmp_path, tmp_path / "junk.zip", "junk.zip is not a valid zip file")
    good = _zip(tmp_path / "good.zip", DATASET)
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[:-30])  # central directory cut off
    _refuse(tmp_path, tmp_path / "cut.zip", "cut.zip is not a valid zip file")
    data = bytearray(_zip(tmp_path / "dmg.zip", [("images/a.png", bytes(range(256)) * 400)]).read_bytes())
    data[60:120] = bytes(60)  # damage the compressed data of the only entry
    (tmp_path / "dmg.zip").write_bytes(bytes(data))
    _refuse(tmp_path, tmp_path / "dmg.zip", "dmg.zip is not a valid zip file")
    with pytest.raises(DataError, match="does not exist"):
        extract_zip(tmp_path / "nope.zip", tmp_path / "dest")


def test_existing_files_in_dest_are_never_overwritten(tmp_path):
    dest = tmp_path / "dest"
    (dest / "images").mkdir(parents=True)
    (dest / "images" / "a.png").write_bytes(b"original")
    z = _zip(tmp_path / "d.zip", DATASET)
    with pytest.raises(DataError, match="already exists"):
        extract_zip(z, dest)
    assert (dest / "images" / "a.png").read_bytes() == b"original"
    assert _files(dest) == {"images", "images/a.png"}  # what this call wrote is gone, what was there stays


def test_symlinked_folder_in_dest_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "images").symlink_to(outside, target_is_directory=True)
    z = _zip(tmp_path / "d.zip", DATASET)
    with pytest.raises(DataError, match="not a folder"):
        extract_zip(z, dest)
    assert list(outside.iterdir()) == []


def test_nothing_is_written_outside_dest(tmp_path):
    """Marker test: a mix of good and hostile zips only ever adds files under their dest."""
    hostile = [("../x.png", b"1"), ("/abs.png", b"1"), ("a/../../x.png", b"1")]
    before = _files(tmp_path)
    made = []
    for i, entry in enumerate(hostile):
        z = _zip(tmp_path / f"h{i}.zip", DATASET + [entry])
        made.append(z.name)
        with pytest.raises(DataError):
            extract_zip(z, tmp_path / f"dest{i}")
    good = _zip(tmp_path / "good.zip", DATASET)
    extract_zip(good, tmp_path / "gooddest")
    added = _files(tmp_path) - before
    assert {a for a in added if not a.startswith("gooddest")} == set(made) | {"good.zip"}
