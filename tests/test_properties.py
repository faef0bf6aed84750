"""Property-based tests (Hypothesis) of the readers of user-supplied files and of the names built from them:

1. manifest and input-list CSVs (:func:`facepipe.manifest.read_manifest`, the ``csv`` adapter of ``facepipe manifest``
   and :func:`facepipe.inference.resolve_inputs`): any valid file (unicode paths with spaces, commas, quotes and
   ``:``; label spellings; a BOM; CRLF; quoting; extra columns; empty optional fields; blank lines) reads back row
   for row, and any other file is an :class:`~facepipe.errors.InputError` naming it;
2. video ids and sample keys (:mod:`facepipe.ids`): key parts only, no dots, stable, distinct, parsed back;
3. the shard index (:func:`facepipe.data.index.read_index`, :func:`~facepipe.data.index.resolve_shards`): a valid
   index gives shard lists whose counts add up and whose URLs lie below the index's folder, and any mutation of it
   is either such an index or a :class:`~facepipe.errors.ShardIndexError` / ``InputError`` naming the file.

Each property runs a bounded number of examples (``_FAST``) so the file stays in the fast set. Plain tests after each
part pin the bugs these properties found, on inputs a person would write.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from facepipe.data.index import read_index, resolve_shards
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.datasets import ManifestConfig, build_manifest
from facepipe.datasets.generic import scan_csv
from facepipe.errors import InputError, ShardIndexError
from facepipe.ids import (
    KEY_SEP,
    SPLITS,
    IdError,
    check_name,
    clip_key,
    parse_key,
    sample_key,
    unique_video_ids,
    video_id_for,
)
from facepipe.inference import resolve_inputs
from facepipe.manifest import MANIFEST_SCHEMA, read_manifest

_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_FS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # files on disk

# ------------------------------------------------------------------------------------------------------------------
# strategies: paths and CSV files

_ODD = " ,;:\"'#.-_()[]&~+=%@!éÉßİı日本語動画🎥\u00a0\u200b"
"""Characters a CSV writer or reader could trip over: separators, quotes, comment and list signs, ``:`` (the
``dataset:video_id`` sign), dots, non-ASCII letters, an emoji, a no-break and a zero-width space."""
_char = st.one_of(st.sampled_from(_ODD), st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"),
                                                       exclude_characters="/\\"))
_part = st.text(_char, min_size=1, max_size=10).map(lambda s: s + "x" if s in (".", "..") or not s.strip() else s)
_EXTS = (".mp4", ".MP4", ".avi", ".mkv", ".tar.gz.mp4", ".mp4.mp4", "")


@st.composite
def rel_paths(draw) -> str:
    """A relative path of 1-3 parts (a file of any extension, or an extension-less image folder); the whole path may
    start or end with spaces (file names can)."""
    parts = draw(st.lists(_part, min_size=1, max_size=3))
    path = "/".join(parts) + draw(st.sampled_from(_EXTS))
    return draw(st.sampled_from(["", " ", "  "])) + path + draw(st.sampled_from(["", " ", "\t"]))


def _no_folder_clash(paths: list[str]) -> bool:
    """No path is a folder of another (``a`` and ``a/b.mp4`` cannot both be files)."""
    return not any(q.startswith(p + "/") for p in paths for q in paths)


_LABEL_SPELLINGS = {0: ("0", "real", "Real", " REAL ", "0 "), 1: ("1", "fake", "Fake", " FAKE", " 1")}


@dataclass
class R:
    """One manifest row as generated: what is written, and what reading it must give back."""

    path: str
    label: int
    label_text: str
    split: str
    method: str | None = None  # as written (None: empty cell)
    source: str | None = None  # path of the row this fake was made from
    identities: tuple[str, ...] = ()


@st.composite
def manifest_rows(draw, max_rows: int = 6, files: bool = False) -> list[R]:
    """Rows with distinct paths; fakes may name a real of the same split as their source (no leakage)."""
    paths = draw(st.lists(rel_paths(), min_size=1, max_size=max_rows, unique=True))
    if files:
        assume(_no_folder_clash(paths))
    rows = []
    for p in paths:
        label = draw(st.integers(0, 1))
        rows.append(R(p, label, draw(st.sampled_from(_LABEL_SPELLINGS[label])), draw(st.sampled_from(SPLITS)),
                      draw(st.none() | st.text(_char, max_size=8).filter(lambda m: ";" not in m)),
                      identities=tuple(draw(st.lists(st.text(_char, min_size=1, max_size=6).filter(
                          lambda i: ";" not in i and i.strip()), max_size=2)))))
    reals = [r for r in rows if r.label == 0]
    for r in rows:
        if r.label == 1 and reals and draw(st.booleans()):
            src = draw(st.sampled_from(reals))
            r.source, r.split = src.path, src.split
    return rows


@dataclass(frozen=True)
class Fmt:
    """How a CSV file is written."""

    bom: bool
    newline: str
    quoting: int
    blank_lines: int  # blank lines at the end (editors leave them)
    extra: tuple[str, ...]  # columns facepipe does not read
    order_seed: int
    split_pad: str
    list_sep: str  # between ';'-separated entries
    list_tail: str  # after the last entry (a separator left behind: '; ')


formats = st.builds(Fmt, st.booleans(), st.sampled_from(["\n", "\r\n"]),
                    st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), st.integers(0, 2),
                    st.lists(st.sampled_from(["notes", "Unnamed: 0", "x y", "ünï", "score"]), unique=True,
                             max_size=2).map(tuple),
                    st.integers(0, 2**16), st.sampled_from(["", " ", "\t"]), st.sampled_from([";", " ; ", "; ;"]),
                    st.sampled_from(["", ";", "; ", " ;  "]))


def _source_ref(r: R, ids: dict[str, str]) -> str:
    """How a fake names its source: by path where a ';'-separated list can hold it as written, else by video id."""
    src = r.source
    plain = ";" not in src and src == src.strip()
    return src if plain else ids[src]


def render_csv(rows: list[R], fmt: Fmt, columns: tuple[str, ...], ids: dict[str, str], extra_values: str = "x, \"y\"")\
        -> bytes:
    """The CSV file of ``rows`` with ``columns`` (and ``fmt.extra``) in a shuffled order."""
    import random

    cols = list(columns) + list(fmt.extra)
    random.Random(fmt.order_seed).shuffle(cols)
    buf = io.StringIO()
    w = csv.writer(buf, quoting=fmt.quoting, lineterminator=fmt.newline)
    w.writerow(cols)
    for r in rows:
        cell = {"path": r.path, "label": r.label_text, "split": fmt.split_pad + r.split + fmt.split_pad,
                "method": r.method or "", "source_ids": _source_ref(r, ids) + fmt.list_tail if r.source else "",
                "identity_ids": fmt.list_sep.join(r.identities) + fmt.list_tail, "dataset": ""}
        w.writerow([cell.get(c, extra_values) for c in cols])
    text = buf.getvalue() + fmt.newline * fmt.blank_lines
    return (b"\xef\xbb\xbf" if fmt.bom else b"") + text.encode()


# ------------------------------------------------------------------------------------------------------------------
# 1. manifest CSVs


@_FAST
@given(rows=manifest_rows(), fmt=formats, with_dataset_col=st.booleans())
def test_read_manifest_reads_every_valid_csv_back(rows, fmt, with_dataset_col):
    ids = unique_video_ids(r.path for r in rows)
    cols = ("path", "label", "split", "method", "source_ids", "identity_ids") + (("dataset",) if with_dataset_col
                                                                                  else ())
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "manifest.csv"
        p.write_bytes(render_csv(rows, fmt, cols, ids))
        df = read_manifest(p, dataset="ds")
    assert df.schema == pl.Schema(MANIFEST_SCHEMA)
    assert df["path"].to_list() == [r.path for r in rows]  # spaces, quotes, commas, ':' kept as written
    assert df["label"].to_list() == [r.label for r in rows]
    assert df["split"].to_list() == [r.split for r in rows]
    assert df["dataset"].to_list() == ["ds"] * len(rows)
    assert df["video_id"].to_list() == [ids[r.path] for r in rows]
    assert len(set(df["video_id"])) == len(rows)  # x.mp4 and x.avi are two videos
    for r, method, sources, idents in zip(rows, df["method"], df["source_ids"], df["identity_ids"]):
        given_method = (r.method or "").strip() or None  # a blank cell, quoted or not, gives no method
        assert method == (given_method if given_method or r.label else "original")
        assert sources.to_list() == ([ids[r.source]] if r.source else [])
        assert idents.to_list() == [i.strip() for i in r.identities]


@_FS
@given(rows=manifest_rows(files=True), fmt=formats)
def test_csv_adapter_builds_the_manifest_of_every_valid_csv(rows, fmt):
    """``facepipe manifest --adapter csv``: files on disk, the list elsewhere (``options.file``)."""
    ids = unique_video_ids(r.path for r in rows)
    with tempfile.TemporaryDirectory() as d:
        root, listing = Path(d) / "videos", Path(d) / "list.csv"
        for r in rows:
            (root / r.path).parent.mkdir(parents=True, exist_ok=True)
            (root / r.path).touch()
        listing.write_bytes(render_csv(rows, fmt, ("path", "label", "split", "method", "source_ids"), ids))
        df = build_manifest("csv", root, "ds", ManifestConfig(both_classes=False, options={"file": str(listing)}))
    got = {r["path"]: r for r in df.iter_rows(named=True)}
    assert sorted(got) == sorted(r.path for r in rows)
    for r in rows:
        g = got[r.path]
        assert (g["video_id"], g["label"], g["split"]) == (ids[r.path], r.label, r.split)
        assert g["method"] == ((r.method or "").strip() or ("fake" if r.label else "original"))
        assert g["source_ids"] == ([ids[r.source]] if r.source else [])
        assert check_name("video_id", g["video_id"])


_LIST_LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1, "original": 0, "manipulated": 1, "none": None, "": None,
                "?": None, " Fake ": 1, "REAL": 0}


@_FS
@given(paths=st.lists(rel_paths(), min_size=1, max_size=5, unique=True).filter(_no_folder_clash),
       data=st.data(), fmt=formats)
def test_predict_input_lists_read_every_row_back(paths, data, fmt):
    """``facepipe predict LIST.csv``: rows relative to the list's folder or absolute; names unique."""
    assume("list.csv" not in paths)
    labels = [data.draw(st.sampled_from(sorted(_LIST_LABELS))) for _ in paths]
    absolute = [data.draw(st.booleans()) for _ in paths]
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        for p in paths:
            (base / p).parent.mkdir(parents=True, exist_ok=True)
            (base / p).write_bytes(b"")
        buf = io.StringIO()
        w = csv.writer(buf, quoting=fmt.quoting, lineterminator=fmt.newline)
        w.writerow(["label", "path", *fmt.extra])
        for p, lab, ab in zip(paths, labels, absolute):
            w.writerow([lab, str(base / p) if ab else p, *["a,b"] * len(fmt.extra)])
        (base / "list.csv").write_bytes((b"\xef\xbb\xbf" if fmt.bom else b"")
                                        + (buf.getvalue() + fmt.newline * fmt.blank_lines).encode())
        got = resolve_inputs([base / "list.csv"])
        assert [g.path for g in got] == [(base / p).resolve() for p in paths]
    assert [g.label for g in got] == [_LIST_LABELS[lab] for lab in labels]
    names = [g.name.lower() for g in got]
    assert len(set(names)) == len(names)  # each input gets its own staging link


_JUNK = {"path": ["a.mp4", "a.avi", "A.mp4", "a/b.mp4", "a-b.mp4", "", "", " "],
         "label": ["real", "fake", "0", "1", "2", "", " Real", "none"],
         "split": [*SPLITS, "", "Train", "training"],
         "video_id": ["a", "b", "a.b", "", "a__b", "_a", "a\n"],
         "dataset": ["ds", "", "my ds", "a:b"],
         "source_ids": ["", "a.mp4", "a", "x:y", "a.mp4;b", "zz:a.b", ";"]}


@st.composite
def junk_csv(draw) -> bytes:
    """A CSV-looking file: some of the columns facepipe reads (maybe none), cells that are often what the column
    holds and often not, ragged rows; or raw bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=64))
    cols = [c for c in ("path", "label", "split") if draw(st.integers(0, 5))]  # each present 5 times in 6
    cols = draw(st.permutations(cols + draw(st.lists(st.sampled_from(["video_id", "dataset", "source_ids", "x", "",
                                                                      "path"]), max_size=2))))
    cell = lambda c: draw(st.sampled_from(_JUNK.get(c, [""])) if draw(st.integers(0, 3))  # noqa: E731
                          else st.text(_char, max_size=6))
    ragged = lambda: draw(st.sampled_from([0, 0, 0, 0, -1, 1]))  # noqa: E731  a field too few or too many
    lines = [cols] + [[cell(c) for c in cols] for _ in range(draw(st.integers(0, 4)))]
    lines = [line[:len(line) + n] + [cell("x")] * n for line in lines for n in [ragged()]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows(lines)
    return buf.getvalue().encode()


def _bad_file_named(e: pytest.ExceptionInfo, p: Path) -> None:
    assert isinstance(e.value, InputError), repr(e.value)
    assert str(p) in str(e.value), str(e.value)


@_FAST
@given(content=junk_csv())
def test_malformed_manifests_are_an_input_error_naming_the_file(content):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "manifest.csv"
        p.write_bytes(content)
        try:
            df = read_manifest(p, dataset="ds")
        except InputError as e:
            assert str(p) in str(e), str(e)
            return
    # accepted: then it is a manifest any stage can use
    assert df.schema == pl.Schema(MANIFEST_SCHEMA)
    assert all(p is not None and p.strip() for p in df["path"])
    assert all(check_name("video_id", v) for v in df["video_id"])
    assert df.select("dataset", "video_id").is_unique().all()


@_FAST
@given(content=junk_csv())
def test_malformed_adapter_csvs_are_an_input_error_naming_the_file(content):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "manifest.csv"
        p.write_bytes(content)
        try:
            rows = scan_csv(Path(d), ManifestConfig())
        except InputError as e:
            assert str(p) in str(e), str(e)
            return
    assert all(r.path.strip() and r.label in (0, 1) and r.split in (None, *SPLITS) for r in rows)


@_FAST
@given(content=junk_csv())
def test_malformed_input_lists_are_an_input_error_naming_the_file(content):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "list.csv"
        p.write_bytes(content)
        try:
            got = resolve_inputs([p])
        except InputError as e:
            assert str(p) in str(e), str(e)
            return
        assert all(g.path.is_file() for g in got)  # only rows naming an existing file


def _manifest(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def test_manifest_blank_lines_are_skipped_and_blank_paths_refused(tmp_path):
    # before: a blank line (an editor's last newline) was a row of nulls: "unknown label None for None"
    p = _manifest(tmp_path, "path,label,split\r\na.mp4,real,train\r\n\r\nb.mp4,fake,train\r\n\r\n")
    assert read_manifest(p, dataset="ds")["path"].to_list() == ["a.mp4", "b.mp4"]
    # before: a quoted empty path was a video '' (id 'video-da39a3ee'), an unquoted one a row with path None
    for text in ('path,label,split\n"",real,train\n', "path,label,split\n,real,train\n",
                 'path,label,split\n"  ",real,train\n'):
        with pytest.raises(InputError, match="blank path") as e:
            read_manifest(_manifest(tmp_path, text), dataset="ds")
        _bad_file_named(e, tmp_path / "m.csv")


def test_manifest_paths_that_share_a_derived_id_are_two_videos(tmp_path):
    # before: "video 'x' of dataset 'ds' is listed 2 times" for x.mp4 + x.avi (and a/b.mp4 + a-b.mp4)
    p = _manifest(tmp_path, "path,label,split\nx.mp4,real,train\nx.avi,real,val\na/b.mp4,real,test\n"
                            "a-b.mp4,real,test\nc.mp4,fake,test\n")
    df = read_manifest(p, dataset="ds")
    assert df["video_id"].to_list() == ["x-13de2cfa", "x-69a513a2", "a-b-26c7cf8b", "a-b-06fe4a09", "c"]


def test_manifest_names_the_file_for_ids_that_cannot_be_key_parts(tmp_path):
    # before: a video_id 'a.b' was accepted (the shard stage failed on it later); a dataset 'my ds', a blank dataset
    # cell and a source 'other:a.b' were an IdError that did not name the manifest
    cases = {"path,label,split,video_id\na.mp4,real,train,a.b\n": ("ds", "video_id 'a.b'"),
             "path,label,split,dataset\na.mp4,real,train,my ds\n": ("ds", "dataset 'my ds'"),
             "path,label,split,dataset\na.mp4,real,train,\n": (None, "blank dataset"),
             "path,label,split,source_ids\na.mp4,fake,train,other:a.b\n": ("ds", "source 'other:a.b'")}
    for text, (dataset, problem) in cases.items():
        with pytest.raises(InputError, match=problem) as e:
            read_manifest(_manifest(tmp_path, text), dataset=dataset)
        _bad_file_named(e, tmp_path / "m.csv")
    p = _manifest(tmp_path, "path,label,split,dataset\na.mp4,real,train,\nb.mp4,real,train, other \n")
    assert read_manifest(p, dataset="ds")["dataset"].to_list() == ["ds", "other"]  # blank: the given name


def test_manifest_lists_drop_blank_entries(tmp_path):
    # before: "a.mp4; " was a source '' that "names no video", and "p1; ;p2" an identity '' shared by every such row
    p = _manifest(tmp_path, 'path,label,split,identity_ids,source_ids\na.mp4,real,train,"p1; ;p2",\n'
                            'b.mp4,fake,train,,"a.mp4; "\n')
    df = read_manifest(p, dataset="ds")
    assert df.select("identity_ids", "source_ids").rows() == [(["p1", "p2"], []), ([], ["a"])]


def test_manifest_quoted_empty_cells_are_empty(tmp_path):
    # before: a writer that quotes every cell gave the real video a method '' (unquoted: 'original')
    p = _manifest(tmp_path, '"path","label","split","method","video_id"\n"a.mp4","real","train","",""\n')
    row = read_manifest(p, dataset="ds").row(0, named=True)
    assert (row["method"], row["video_id"]) == ("original", "a")


def test_csv_adapter_source_paths_may_hold_a_colon(tmp_path):
    # before: a source given as a path with ':' was taken for dataset:video_id and kept as is: the fake lost its
    # original (no per-face labels) without a word
    root = tmp_path / "videos"
    for name in ("12:30.mp4", "12:30_fake.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    (root / "manifest.csv").write_text("path,label,split,source_ids\n12:30.mp4,real,train,\n"
                                       "12:30_fake.mp4,fake,train,12:30.mp4\n")
    df = build_manifest("csv", root, "ds", ManifestConfig(both_classes=False))
    fake = df.filter(pl.col("label") == 1).row(0, named=True)
    assert fake["source_ids"] == [video_id_for("12:30.mp4")]


def test_csv_adapter_names_the_line_of_a_bad_row(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label,split\na.mp4,real,train\n\n,fake,train\n")
    with pytest.raises(InputError, match=r"manifest.csv:4: blank path"):  # before: TypeError / AttributeError
        scan_csv(tmp_path, ManifestConfig())
    (tmp_path / "manifest.csv").write_text("path,label,split\na.mp4,real,train\nb.mp4,fake,Train\n")
    with pytest.raises(InputError, match=r"manifest.csv:3: split 'Train'"):  # before: named the folder only
        scan_csv(tmp_path, ManifestConfig())


def test_predict_lists_skip_blank_lines_and_refuse_blank_paths(tmp_path):
    (tmp_path / "a.mp4").touch()
    (tmp_path / "list.csv").write_text("path,label\na.mp4,fake\n\n")  # before: TypeError (Path(None))
    assert [(g.name, g.label) for g in resolve_inputs([tmp_path / "list.csv"])] == [("a.mp4", 1)]
    (tmp_path / "list.csv").write_text("path,label\na.mp4,fake\n,real\n")
    with pytest.raises(InputError, match=r"list.csv:3: blank path"):
        resolve_inputs([tmp_path / "list.csv"])
    (tmp_path / "list.csv").write_text("path,label\n\n")  # before: no input at all, and predict went on
    with pytest.raises(InputError, match=r"list.csv: the list of inputs has no row"):
        resolve_inputs([tmp_path / "list.csv"])


# ------------------------------------------------------------------------------------------------------------------
# 2. ids and keys

_any_char = st.one_of(st.sampled_from(_ODD + "/\\\n\r\t\x00"), st.characters())
_any_path = st.one_of(st.text(_any_char, max_size=30), rel_paths(), rel_paths().map(lambda p: "/" + p.strip()),
                      # lone surrogates: os.walk's names of files whose names are not UTF-8 (text() rarely draws them)
                      st.text(st.characters(categories=["Cs"]) | st.sampled_from("a/."), min_size=1, max_size=6),
                      st.lists(st.sampled_from(["a", "A", "b", "a.b", "a_b", "a-b", "x", "-", "_"]), min_size=1,
                               max_size=4).map("/".join).flatmap(lambda s: st.sampled_from(_EXTS).map(s.__add__)))
_name = st.lists(st.text("abcxyzABCXYZ0189-", min_size=1, max_size=5), min_size=1, max_size=3).map("_".join)
"""Strings :func:`check_name` accepts: parts of letters, digits and '-' joined by single '_'."""
_KEY_PART = re.compile(r"[A-Za-z0-9_-]+")


def _plain(rel: str) -> str:
    """:func:`video_id_for`'s documented form before any hash: absolute paths cut to their last four parts, the
    last part's extension dropped, ``/`` -> ``-``. Only paths with one plain form may share an id."""
    if rel.startswith("/"):
        rel = "/".join(rel.strip("/").split("/")[-4:])
    head, _, last = rel.rpartition("/")
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return (f"{head}/{stem}" if head else stem).replace("/", "-")


def _is_key_part(v: str) -> bool:
    return bool(_KEY_PART.fullmatch(v)) and KEY_SEP not in v and v[0] != "_" and v[-1] != "_"


@_FAST
@given(value=st.one_of(st.text(_any_char, max_size=12), _name, _name.map(lambda s: s + "\n")))
def test_check_name_accepts_exactly_the_key_parts(value):
    try:
        assert check_name("video_id", value) == value
    except IdError as e:
        assert not _is_key_part(value) and str(e).startswith("video_id '"), str(e)
        return
    assert _is_key_part(value) and "." not in value


@_FAST
@given(rel=_any_path)
def test_video_ids_are_stable_key_parts(rel):
    vid = video_id_for(rel)
    assert check_name("video_id", vid) == vid and "." not in vid
    assert video_id_for(rel) == vid == video_id_for(str(rel))  # no hidden state (set iteration, hash seeds)


@_FAST
@given(a=_any_path, b=_any_path)
def test_video_ids_collide_only_where_documented(a, b):
    """Two paths share an id only when nothing but separators and the extension had to change in either
    (``x.mp4``/``x.avi``, ``a/b.mp4``/``a-b.mp4``): any other change appends the path's hash."""
    if a != b and video_id_for(a) == video_id_for(b):
        assert _plain(a) == _plain(b) == video_id_for(a), (a, b)


@_FAST
@given(paths=st.lists(_any_path, min_size=1, max_size=8), extra=_any_path, seed=st.randoms())
def test_unique_video_ids_are_distinct_stable_and_local(paths, extra, seed):
    try:
        ids = unique_video_ids(paths)
    except IdError:  # only when a path's own id is another's id with a hash: not reachable by these paths
        pytest.fail(f"ids of {paths} cannot be told apart")
    assert set(ids) == set(paths)
    assert len(set(ids.values())) == len(ids)
    assert all(check_name("video_id", v) for v in ids.values())
    shuffled = list(paths)
    seed.shuffle(shuffled)
    assert unique_video_ids(shuffled + paths) == ids  # the set decides, not its order or repeats
    for p, v in ids.items():  # a path whose id no other path shares keeps video_id_for's id
        if sum(video_id_for(q) == video_id_for(p) for q in ids) == 1:
            assert v == video_id_for(p)
    more = unique_video_ids([*paths, extra])
    for p in paths:  # adding a video renames only the videos whose id it shares
        assert more[p] == ids[p] or video_id_for(p) == video_id_for(extra)


_frame = st.integers(-10**6, 10**9)


@_FAST
@given(a=st.tuples(_name, _name, _frame, _frame), b=st.tuples(_name, _name, _frame, _frame))
def test_sample_keys_parse_back_and_never_collide(a, b):
    ka, kb = sample_key(*a), sample_key(*b)
    assert "." not in ka and parse_key(ka) == a
    assert (ka == kb) == (a == b)
    ca = clip_key(*a)
    assert ca.split(KEY_SEP) == [a[0], a[1], f"c{a[2]}", str(a[3])] and "." not in ca
    assert ca != ka and ca != kb
    with pytest.raises(IdError):  # a clip key is not a frame key
        parse_key(ca)


_digits = st.sampled_from(["0", "000000", "000007", "7", "-00001", "-1", "-0", "+1", "1_0", "\u0663", " 1",
                           "1234567", "0001234567", "", "x", "1.0"])


@_FAST
@given(key=st.one_of(st.text(_any_char, max_size=20),
                     st.tuples(st.one_of(_name, st.text(_any_char, max_size=4)), _name, _digits, _digits)
                     .map(KEY_SEP.join)))
def test_parse_key_accepts_only_keys_sample_key_writes(key):
    try:
        parts = parse_key(key)
    except IdError:
        return
    assert sample_key(*parts) == key


def test_ids_regressions():
    # pinned: ids name crops, shards and checkpoints' footprints; any change renames every dataset's videos
    assert video_id_for("ffpp/original_634.mp4") == "ffpp-original_634"
    assert video_id_for("日本/動画.mp4") == "video-fc6a31a4"
    assert video_id_for("a b.mp4") == "a_b-a1f10cd9"
    assert video_id_for("dir/clip.tar.gz.mp4") == "dir-clip_tar_gz-d8740bd9"
    assert video_id_for("/data/x/a/b/c/d.mp4") == "a-b-c-d"
    assert video_id_for("a/b.mp4") != video_id_for("a_b.mp4") and video_id_for("A.mp4") != video_id_for("a.mp4")
    assert video_id_for("a\udcff.mp4") == "a-16ed6578"  # before: UnicodeEncodeError (a file name that is not UTF-8)
    with pytest.raises(IdError):  # before: accepted ("$" matches before a final newline)
        check_name("video_id", "abc\n")
    for key in ("a__b__x__0", "a__b__+1__0", "a__b__1_0__0", "a__b__\u0663__0", "a.b__c__000001__0",
                "a__b__1__0", "a__b__000001__01"):  # before: ValueError, or parts sample_key never writes
        with pytest.raises(IdError):
            parse_key(key)


def test_unique_video_ids_match_the_extract_stage(tmp_path):
    """A folder's videos get the same ids from ``facepipe extract --video-dir`` (no manifest) and from a manifest."""
    from facepipe.stages.extract.inputs import discover_videos

    rels = ["x.mp4", "x.avi", "a/b.mp4", "a-b.mp4", "c d.mp4", "c.mp4"]
    for r in rels:
        (tmp_path / r).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r).touch()
    assert {j.rel: j.video_id for j in discover_videos(tmp_path, (".mp4", ".avi"))} == unique_video_ids(rels)


# ------------------------------------------------------------------------------------------------------------------
# 3. the shard index

_CELL_NAMES = st.sampled_from(["real", "fake", "uncertain"])
_DATASETS = st.sampled_from(["ds", "ffpp", "celeb-df", "a_b", "x1"]) | _name


@st.composite
def shard_entries(draw, split: str, version: str, i: int) -> dict:
    cells = draw(st.dictionaries(st.tuples(_DATASETS, _CELL_NAMES).map(":".join), st.integers(1, 50), min_size=1,
                                 max_size=3))
    n = sum(cells.values())
    name = draw(st.sampled_from([f"{split}-{i:06d}.tar", f"{split}-ds-real-{i:06d}.tar"]))
    return {"url": f"{version}/{name}", "samples": n, "cells": cells, "bytes": 10240 * n,
            "datasets": {c.rsplit(":", 1)[0]: 0 for c in cells}, "labels": {}, "methods": {}, "label_sources": {}}


@st.composite
def indexes(draw) -> dict:
    """Index dicts as ``facepipe shard`` writes them (see ``_write_set``)."""
    version = f"set-{draw(st.integers(0, 2**64 - 1)):016x}"
    splits = {}
    for split in draw(st.lists(st.sampled_from(SPLITS), min_size=1, unique=True)):
        shards = [draw(shard_entries(split, version, i)) for i in range(draw(st.integers(0, 3)))]
        splits[split] = {"samples": sum(s["samples"] for s in shards), "shards": shards}
    index = {"schema_version": SCHEMA_VERSION, "version": version, "views": draw(st.sampled_from([[], ["dct"]])),
             "masks": draw(st.booleans()), "splits": splits, "total": sum(s["samples"] for s in splits.values()),
             "crop_size": draw(st.sampled_from([64, 224, None])), "image_format": "png",
             "videos": f"{version}/videos.parquet"}
    if draw(st.booleans()):
        index.update(sample_kind="clip", clip_length=draw(st.integers(1, 16)), frame_step=1)
    else:
        index["sample_kind"] = "frame"
    return index


_json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=False)
                            | st.text(_char, max_size=6), lambda c: st.lists(c, max_size=2)
                            | st.dictionaries(st.text(max_size=4), c, max_size=2), max_leaves=4)
_BAD_URLS = ["../x.tar", "/etc/passwd", "set-x/../../x.tar", "s3://bucket/x.tar", "pipe:cat x.tar", "C:\\x.tar",
             "", " ", "..", "a/..", None, 7]


def _locations(node, path=()):
    """Every (container path) in a JSON tree, for mutations."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _locations(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _locations(v, (*path, i))


@st.composite
def mutated_indexes(draw) -> dict:
    """A valid index with 1-3 of: a key dropped, a value replaced by any JSON value, a count made negative or
    off by one, a shard URL outside the folder, a cell that names no label."""
    index = draw(indexes())
    for _ in range(draw(st.integers(1, 3))):
        locs = [p for p in _locations(index) if p]
        if not locs:
            break
        *parent_path, key = draw(st.sampled_from(locs))
        parent = index
        for k in parent_path:
            parent = parent[k]
        kind = draw(st.sampled_from(["drop", "value", "count", "url", "cell"]))
        if kind == "drop" and isinstance(parent, dict):
            del parent[key]
        elif kind == "count" and isinstance(parent[key], int):
            parent[key] = draw(st.sampled_from([-parent[key] - 1, parent[key] + 1, str(parent[key]),
                                                float(parent[key]), True]))
        elif kind == "url" and isinstance(parent, dict) and "url" in parent:
            parent["url"] = draw(st.sampled_from(_BAD_URLS))
        elif kind == "cell" and isinstance(parent, dict) and isinstance(parent.get("cells"), dict):
            parent["cells"][draw(st.sampled_from(["ds:weird", "nocolon", ":real", "ds:Real"]))] = 1
        else:
            parent[key] = draw(_json_values)
    return index


def _check_shard_set(folder: Path, index: dict) -> None:
    """What an accepted index must give: per split with shards, URLs below the folder (one per shard, in order)
    and counts that add up; a split without shards or absent is an InputError naming the index."""
    where = str(folder / "index.json")
    for split in (*SPLITS, "nope"):
        info = index["splits"].get(split)
        try:
            ss = resolve_shards(folder, split)
        except InputError as e:
            assert where in str(e) and (info is None or not info["shards"]), str(e)
            continue
        assert ss.urls == tuple(f"{folder}/{s['url']}" for s in info["shards"])
        assert all(os.path.normpath(u).startswith(f"{folder}{os.sep}") for u in ss.urls)
        assert ss.samples == info["samples"] == sum(s["samples"] for s in info["shards"])
        assert sum(ss.cells.values()) == ss.samples and {lab for _, lab in ss.cells} <= {-1, 0, 1}
        assert [sum(c.values()) for c in ss.shard_cells] == [s["samples"] for s in info["shards"]]
        assert ss.sample_kind == index.get("sample_kind", "frame")


@_FAST
@given(index=indexes())
def test_valid_indexes_are_read_as_written(index):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
        assert read_index(folder) == read_index(folder / "index.json") == index
        _check_shard_set(folder, index)


@_FAST
@given(index=mutated_indexes())
def test_mutated_indexes_are_read_consistently_or_refused_naming_the_file(index):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "index.json").write_text(json.dumps(index))
        try:
            got = read_index(folder)
        except ShardIndexError as e:
            assert str(folder / "index.json") in str(e), str(e)
            return
        assert got == index
        _check_shard_set(folder, index)


@_FAST
@given(text=st.one_of(st.binary(max_size=40), indexes().flatmap(
    lambda i: st.integers(0, len(json.dumps(i)) - 1).map(lambda n: json.dumps(i)[:n].encode())),
    st.sampled_from([b"", b"[]", b"null", b'"index"', b"NaN", b"[" * 5000, b'{"a":' * 5000, b"\xff\xfe{}"])))
def test_unreadable_indexes_are_one_error_naming_the_file(text):
    """Empty, truncated, not JSON, not UTF-8, nested past the recursion limit, not an object."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "index.json").write_bytes(text)
        for reader in (read_index, lambda f: resolve_shards(f, "train")):
            with pytest.raises(ShardIndexError) as e:
                reader(Path(d))
            assert str(Path(d) / "index.json") in str(e.value)


def test_index_regressions(tmp_path):
    """Values that escaped the checks before as KeyError / TypeError / AttributeError / ValueError / RecursionError,
    or were used as they were (a URL outside the shard folder, negative or inconsistent counts)."""
    good = {"schema_version": SCHEMA_VERSION, "splits": {"train": {"samples": 3, "shards": [
        {"url": "set-x/train-000000.tar", "samples": 3, "cells": {"d:real": 2, "d:fake": 1}}]}}}
    shard = good["splits"]["train"]["shards"][0]
    cases = {
        "cells": {**shard, "cells": [2, 1]},                       # AttributeError ('list'.items)
        "cellname": {**shard, "cells": {"dreal": 3}},              # ValueError (unpacking rsplit)
        "label": {**shard, "cells": {"d:weird": 3}},               # KeyError ('weird')
        "count": {**shard, "samples": "3"},                        # ValueError (int('x')) / TypeError on the sum
        "negative": {**shard, "samples": -3, "cells": {"d:real": -3}},
        "sum": {**shard, "cells": {"d:real": 5}},                  # cells say 5, the shard 3
        "escape": {**shard, "url": "../../elsewhere/train-000000.tar"},
        "absolute": {**shard, "url": "/etc/train-000000.tar"},
    }
    for name, bad_shard in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.json").write_text(json.dumps({**good, "splits": {"train": {
            "samples": 3, "shards": [bad_shard]}}}))
        with pytest.raises(ShardIndexError, match="wrong values") as e:
            resolve_shards(tmp_path / name, "train")
        assert str(tmp_path / name / "index.json") in str(e.value)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "index.json").write_text(json.dumps({**good, "splits": {"train": {"samples": 3,
                                                                                            "shards": 5}}}))
    with pytest.raises(ShardIndexError, match="not a list"):  # TypeError ('int' is not iterable)
        read_index(tmp_path / "shards")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "index.json").write_text("[" * 100000)
    with pytest.raises(ShardIndexError, match="not JSON"):  # RecursionError
        read_index(tmp_path / "deep")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "index.json").write_text(json.dumps(good))
    assert resolve_shards(tmp_path / "ok", "train").cells == {("d", 0): 2, ("d", 1): 1}


_name = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]|_(?=[A-Za-z0-9-])){0,8}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_name, _name, st.integers(0, 2_000_000), st.integers(0, 120), st.integers(0, 40)),
                min_size=1, max_size=20))
def test_vectorised_keys_equal_sample_key_and_clip_key(rows):
    """The shard stage builds every key in polars (shard.sample_keys); each equals the one ids.sample_key /
    ids.clip_key makes of its row."""
    import polars as pl

    from facepipe.ids import clip_key, sample_key
    from facepipe.stages.shard import sample_keys

    df = pl.DataFrame(rows, schema={"dataset": pl.String, "video_id": pl.String, "frame_index": pl.Int64,
                                    "track_id": pl.Int32, "clip_id": pl.Int32}, orient="row")
    assert df.select(sample_keys(df))["key"].to_list() == [sample_key(d, v, f, t) for d, v, f, t, _ in rows]
    assert df.select(sample_keys(df, clips=True))["key"].to_list() == [clip_key(d, v, c, t) for d, v, _, t, c in rows]


def test_vectorised_keys_refuse_names_that_cannot_be_key_parts():
    import polars as pl

    from facepipe.stages.shard import sample_keys

    df = pl.DataFrame({"dataset": ["ds"], "video_id": ["a.b"], "frame_index": [1], "track_id": [0]})
    with pytest.raises(IdError, match="video_id 'a.b'"):
        df.select(sample_keys(df))
