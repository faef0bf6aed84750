"""Shards in object storage, against a real S3-API server on 127.0.0.1 (moto's ThreadedMotoServer, started here):
`facepipe shard --out s3://…` uploads the set with the index last, make_loader streams it (workers included)
exactly as from local disk, a killed upload never publishes an index naming missing shards, and a missing
object is an error naming it."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from facepipe.cli import app  # noqa: E402
from facepipe.data import storage  # noqa: E402
from facepipe.data.loader import make_loader  # noqa: E402
from facepipe.errors import InputError  # noqa: E402
from facepipe.stages import shard  # noqa: E402
from tests.conftest import shard_files  # noqa: E402
from tests.s3_faults import aws_env  # noqa: E402

pytestmark = pytest.mark.integration  # an S3-API server (moto) on 127.0.0.1

BUCKET = "facepipe-test"


@pytest.fixture(scope="module")
def s3():
    """An S3-API server on loopback; the standard AWS variables point every client (and worker) at it."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with aws_env(f"http://{host}:{port}"):
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield fs
    server.stop()


def _inputs(example_shards) -> shard.ShardConfig:
    root = example_shards.parent
    return shard.ShardConfig(inputs=(shard.ShardInput(dataset="example", extract=str(root / "extract"),
                                                      manifest=str(root / "manifest.parquet")),), max_samples=16,
                             layout="mixed")  # as the fixture


def _stream(source, split: str, workers: int = 0) -> list[tuple[str, int]]:
    loader = make_loader(source, split, batch_size=5, num_workers=workers, shuffle=False, handler="raise")
    return sorted((k, int(y)) for b in loader for k, y in zip(b["key"], b["label"]))


def test_cli_writes_the_set_to_s3_and_make_loader_streams_the_same_samples(s3, example_shards):
    root = example_shards.parent
    url = f"s3://{BUCKET}/example/"
    r = CliRunner().invoke(app, ["shard", "--out", url, "--max-samples", "16", "--no-progress", "-S", "layout=mixed",
                                 "--input",
                                 f"dataset=example,extract={root / 'extract'},manifest={root / 'manifest.parquet'}"])
    assert r.exit_code == 0, r.output
    local_index = json.loads((example_shards / "index.json").read_text())
    remote_index = json.loads(s3.cat(f"{BUCKET}/example/index.json"))
    assert remote_index == local_index  # same inputs and parameters: the same version, counts and bytes
    version = local_index["version"]
    for tar in sorted(shard_files(example_shards).glob("*.tar")):
        assert s3.cat(f"{BUCKET}/example/{version}/{tar.name}") == tar.read_bytes()
    assert {p.rsplit("/", 1)[-1] for p in s3.ls(f"{BUCKET}/example")} == {"index.json", "stats.json", "counts.csv",
                                                                         "README.md", version}
    for split in ("train", "val", "test"):
        assert _stream(url, split) == _stream(example_shards, split)
    # DataLoader workers (forked after the index was read in this process) stream it too
    assert _stream(url, "train", workers=2) == _stream(example_shards, "train")


def test_a_killed_upload_never_publishes_an_index_naming_missing_shards(s3, example_shards, monkeypatch):
    prefix = f"{BUCKET}/killed"
    url = f"s3://{prefix}"
    cfg = _inputs(example_shards)
    monkeypatch.setenv("FACEPIPE_TEST_FAULT", "upload:train-000000.tar")
    with pytest.raises(OSError, match="train-000000.tar"):
        shard.run(url, cfg, progress=False)
    assert not s3.exists(f"{prefix}/index.json")  # first publish interrupted: nothing is published
    monkeypatch.delenv("FACEPIPE_TEST_FAULT")
    first = shard.run(url, cfg, progress=False)
    s3.invalidate_cache()
    old = json.loads(s3.cat(f"{prefix}/index.json"))
    assert old["version"] == first.version

    smaller = cfg.model_copy(update={"max_samples": 8})  # another set version
    monkeypatch.setenv("FACEPIPE_TEST_FAULT", "upload:train-000000.tar")
    with pytest.raises(OSError):
        shard.run(url, smaller, progress=False)
    s3.invalidate_cache()
    assert json.loads(s3.cat(f"{prefix}/index.json")) == old  # readers still see the complete old set
    for split in old["splits"].values():
        for sh in split["shards"]:
            assert s3.exists(f"{prefix}/{sh['url']}")
    assert _stream(url, "train") == _stream(example_shards, "train")

    monkeypatch.delenv("FACEPIPE_TEST_FAULT")
    second = shard.run(url, smaller, progress=False)
    s3.invalidate_cache()
    new = json.loads(s3.cat(f"{prefix}/index.json"))
    assert new["version"] == second.version != first.version
    # the old set stays for shard.grace_hours (loader passes begun on it finish), marked with when it was replaced
    assert s3.exists(f"{prefix}/{first.version}/_replaced.json")
    shard.run(url, smaller.model_copy(update={"grace_hours": 0}), progress=False)
    s3.invalidate_cache()
    assert not s3.exists(f"{prefix}/{first.version}")  # past its grace: removed by the next run
    assert not s3.exists(f"{prefix}/{second.version}/_replaced.json")  # the current set carries no marker
    assert _stream(url, "train") == _stream(example_shards, "train")


def test_a_missing_object_is_named(s3, example_shards):
    prefix = f"{BUCKET}/missing"
    summary = shard.run(f"s3://{prefix}", _inputs(example_shards), progress=False)
    s3.invalidate_cache()
    index = json.loads(s3.cat(f"{prefix}/index.json"))
    gone = index["splits"]["train"]["shards"][0]["url"]
    s3.rm(f"{prefix}/{gone}")
    with pytest.raises(InputError, match=f"s3://{prefix}/{gone}: no such object"):
        _stream(f"s3://{prefix}", "train")
    loader = make_loader(f"s3://{prefix}", "train", batch_size=5, num_workers=0, shuffle=False)  # handler warn
    seen = sum(len(b["key"]) for b in loader)
    assert loader.errors == 1 and seen == index["splits"]["train"]["samples"] - index["splits"]["train"]["shards"][0][
        "samples"]
    with pytest.raises(InputError, match="no such object"):
        make_loader(f"s3://{BUCKET}/nowhere", "train")
    assert summary.version == index["version"]


def test_storage_urls():
    assert storage.is_remote("s3://b/p") and storage.is_remote("gs://b/p") and not storage.is_remote("/data/shards")
    assert not storage.is_remote("https://host/x.tar") and storage.join("s3://b/p/", "index.json") == "s3://b/p/index.json"


def test_opening_an_object_is_retried_on_transient_errors(s3, example_shards, monkeypatch):
    """A dropped connection on open is retried (with backoff); a refusal that is not transient is not."""
    prefix = f"{BUCKET}/retry"
    s3.put_file(str(example_shards / "index.json"), f"{prefix}/index.json")
    fs, _ = storage.filesystem(f"s3://{prefix}/index.json")
    real_open, calls = fs.open, []

    def flaky(path, *a, **kw):
        calls.append(path)
        if len(calls) <= 2:
            raise ConnectionResetError("connection reset by peer")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(fs, "open", flaky)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    assert json.loads(storage.read_text(f"s3://{prefix}/index.json")) == json.loads(
        (example_shards / "index.json").read_text())
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(fs, "open", lambda *a, **kw: (_ for _ in ()).throw(ValueError("bad request")))
    with pytest.raises(InputError, match="cannot open after 1 attempt"):
        storage.read_text(f"s3://{prefix}/index.json")


def test_a_failing_run_uploads_no_partial_shard(s3, example_shards, monkeypatch):
    """A sample that cannot be read mid-shard stops the run before anything half-written reaches the store."""
    prefix = f"{BUCKET}/partial"
    real_sample, seen = shard._sample, []

    def failing(r, *a, **kw):
        seen.append(r["key"])
        if len(seen) == 5:
            raise InputError(f"{r['crop_path']}: cannot read: injected")
        return real_sample(r, *a, **kw)

    monkeypatch.setattr(shard, "_sample", failing)
    with pytest.raises(InputError, match="injected"):
        shard.run(f"s3://{prefix}", _inputs(example_shards), progress=False)
    s3.invalidate_cache()
    assert not s3.exists(prefix) or s3.find(prefix) == []
