"""Faults from object storage while shards stream and upload (issue 27, item 2): a real S3-API server (moto) on
127.0.0.1 behind a fault-injecting proxy (tests/s3_faults.py), so s3fs/botocore meet real HTTP 500/503 responses,
responses slower than the read timeout, connections reset mid-object and objects deleted after the index was read.

What must hold: transient faults cost retries, never samples: every key of the index is delivered exactly once
(counted); a fault that does not go away is an error naming the object; an upload that fails at any object leaves
the previous set readable and never an index naming missing shards."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from facepipe.data import storage  # noqa: E402
from facepipe.data.loader import make_loader  # noqa: E402
from facepipe.errors import InputError  # noqa: E402
from facepipe.stages import shard  # noqa: E402
from tests.s3_faults import FaultProxy, Rule, aws_env  # noqa: E402

pytestmark = pytest.mark.integration  # an S3-API server (moto) and a proxy on 127.0.0.1

BUCKET = "facepipe-faults"
READ_TIMEOUT = 1.0  # seconds; the proxy's slow responses wait longer


@pytest.fixture(scope="module")
def store():
    """moto behind the fault proxy; the AWS variables point every client (and DataLoader worker) at the proxy, and
    fsspec's s3 options (what ``FSSPEC_S3`` sets from the environment) shorten the read timeout."""
    import fsspec.config
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = FaultProxy(server.get_host_and_port())
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"config_kwargs": {"read_timeout": READ_TIMEOUT, "connect_timeout": READ_TIMEOUT}}
    with aws_env(proxy.url, AWS_MAX_ATTEMPTS="3", AWS_RETRY_MODE="standard"):
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        yield fs, proxy
    proxy.stop()
    server.stop()
    if saved_conf is None:
        fsspec.config.conf.pop("s3", None)
    else:
        fsspec.config.conf["s3"] = saved_conf


def _cfg(example_shards, **kw) -> shard.ShardConfig:
    """The example's set in shards of 2 samples (several per split)."""
    root = example_shards.parent
    return shard.ShardConfig(inputs=(shard.ShardInput(dataset="example", extract=str(root / "extract"),
                                                      manifest=str(root / "manifest.parquet")),),
                             **{"max_samples": 2, "layout": "mixed", **kw})


def _keys(source, split: str, workers: int = 0, handler: str = "raise") -> tuple[Counter, object]:
    loader = make_loader(source, split, batch_size=4, num_workers=workers, shuffle=False, handler=handler)
    keys = Counter(k for b in loader for k in b["key"])
    return keys, loader


def _published(fs, store, prefix: str, example_shards) -> dict:
    fs, proxy = store
    proxy.inject()
    shard.run(f"s3://{prefix}", _cfg(example_shards), progress=False)
    fs.invalidate_cache()
    return json.loads(fs.cat(f"{prefix}/index.json"))


@pytest.mark.parametrize("workers", [0, 2])
def test_transient_faults_cost_retries_not_samples(store, example_shards, workers):
    """One fault per shard; the 7 resets in a row outlast s3fs's own 5 attempts (facepipe reopens the object at the
    byte reached)."""
    fs, proxy = store
    prefix = f"{BUCKET}/stream{workers}"
    index = _published(fs, store, prefix, example_shards)
    tars = [s["url"].rsplit("/", 1)[-1] for s in index["splits"]["train"]["shards"]]
    assert len(tars) >= 6
    expected, _ = _keys(example_shards, "train")
    assert sum(expected.values()) == index["splits"]["train"]["samples"] and set(expected.values()) == {1}
    proxy.inject(Rule("GET", tars[0], "503", times=2), Rule("GET", tars[1], "500"),
                 Rule("GET", tars[2], "slow", delay=3 * READ_TIMEOUT), Rule("GET", tars[3], "reset"),
                 Rule("GET", tars[4], "reset", times=7), Rule("HEAD", tars[5], "drop"))
    keys, loader = _keys(f"s3://{prefix}", "train", workers=workers)
    fired = Counter(f for _, _, f in proxy.fired())
    assert fired == {"503": 2, "500": 1, "slow": 1, "reset": 8, "drop": 1}  # every fault met a request
    assert keys == expected  # each key of the index exactly once: nothing lost, nothing repeated
    assert loader.errors == 0


def test_a_fault_that_persists_names_the_object_and_loses_only_its_shard(store, example_shards, monkeypatch):
    fs, proxy = store
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)  # facepipe's backoff (s3fs's own is short)
    prefix = f"{BUCKET}/persist"
    index = _published(fs, store, prefix, example_shards)
    first = index["splits"]["train"]["shards"][0]
    url = f"s3://{prefix}/{first['url']}"
    expected, _ = _keys(example_shards, "train")
    proxy.inject(Rule("GET", first["url"], "reset", times=None))
    with pytest.raises(InputError, match=f"{url}: read failed at byte 0 after 5 attempt"):
        _keys(f"s3://{prefix}", "train")
    keys, loader = _keys(f"s3://{prefix}", "train", handler="warn")
    assert loader.errors == 1 and sum(keys.values()) == sum(expected.values()) - first["samples"]
    assert set(keys.values()) == {1} and set(keys) < set(expected)
    proxy.inject(Rule("GET", first["url"], "500", times=None))
    with pytest.raises(InputError, match=f"{url}: "):
        _keys(f"s3://{prefix}", "train")


def test_a_shard_deleted_after_the_index_was_read_is_named(store, example_shards):
    fs, proxy = store
    prefix = f"{BUCKET}/deleted"
    index = _published(fs, store, prefix, example_shards)
    gone = index["splits"]["train"]["shards"][1]
    loader = make_loader(f"s3://{prefix}", "train", batch_size=4, num_workers=0, shuffle=False, handler="warn")
    fs.rm(f"{prefix}/{gone['url']}")
    keys = Counter(k for b in loader for k in b["key"])
    assert loader.errors == 1 and sum(keys.values()) == index["splits"]["train"]["samples"] - gone["samples"]
    loader = make_loader(f"s3://{prefix}", "train", batch_size=4, num_workers=0, shuffle=False, handler="raise")
    with pytest.raises(InputError, match=f"s3://{prefix}/{gone['url']}: no such object"):
        list(loader)


def test_uploads_retry_transient_faults(store, example_shards, monkeypatch, tmp_path):
    fs, proxy = store
    shard.run(tmp_path, _cfg(example_shards), progress=False)  # the same set on local disk
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    prefix = f"{BUCKET}/upload"
    proxy.inject(Rule("PUT", "train-000000.tar", "503", times=2), Rule("PUT", "val-000000.tar", "drop"),
                 Rule("PUT", "test-000000.tar", "reset"), Rule("PUT", "index.json", "500"))
    summary = shard.run(f"s3://{prefix}", _cfg(example_shards), progress=False)
    assert Counter(f for _, _, f in proxy.fired()) == {"503": 2, "drop": 1, "reset": 1, "500": 1}
    fs.invalidate_cache()
    local = json.loads((tmp_path / "index.json").read_text())
    assert json.loads(fs.cat(f"{prefix}/index.json")) == local
    for split in local["splits"].values():
        for sh in split["shards"]:
            assert fs.cat(f"{prefix}/{sh['url']}") == (tmp_path / sh["url"]).read_bytes()
    assert summary.version == local["version"]


def test_an_upload_failing_at_any_object_leaves_the_previous_set_readable(store, example_shards, monkeypatch):
    """Publish v1, then fail the upload of v2 for good at each of its objects in turn: the index stays v1's and every
    shard it names is there; the final, unfailed upload publishes v2 and removes v1."""
    fs, proxy = store
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    prefix = f"{BUCKET}/publish"
    old = _published(fs, store, prefix, example_shards)
    expected, _ = _keys(f"s3://{prefix}", "train")
    smaller = _cfg(example_shards, max_samples=3)  # another set version
    proxy.inject()
    objects = []
    real_put = storage.RemoteSet.put
    monkeypatch.setattr(storage.RemoteSet, "put", lambda self, local, name: (objects.append(name),
                                                                            real_put(self, local, name))[1])
    new = shard.run(f"s3://{prefix}", smaller, progress=False)  # the order of v2's objects
    monkeypatch.setattr(storage.RemoteSet, "put", real_put)
    assert objects[-1] == "index.json" and len(objects) >= 6
    proxy.inject()
    shard.run(f"s3://{prefix}", _cfg(example_shards), progress=False)  # v1 again
    for name in objects:
        proxy.inject(Rule("PUT", name.rsplit("/", 1)[-1], "drop", times=None))
        with pytest.raises(OSError, match=name.rsplit("/", 1)[-1]):
            shard.run(f"s3://{prefix}", smaller, progress=False)
        proxy.inject()
        fs.invalidate_cache()
        assert json.loads(fs.cat(f"{prefix}/index.json"))["version"] == old["version"], name
        for split in old["splits"].values():
            assert all(fs.exists(f"{prefix}/{sh['url']}") for sh in split["shards"]), name
    assert _keys(f"s3://{prefix}", "train")[0] == expected
    final = shard.run(f"s3://{prefix}", smaller, progress=False)
    fs.invalidate_cache()
    assert json.loads(fs.cat(f"{prefix}/index.json"))["version"] == final.version == new.version != old["version"]


def test_a_pass_over_s3_finishes_on_its_set_while_a_new_one_is_published(store, example_shards):
    fs, proxy = store
    prefix = f"{BUCKET}/readers"
    first = _published(fs, store, prefix, example_shards)
    expected, _ = _keys(f"s3://{prefix}", "train")
    loader = make_loader(f"s3://{prefix}", "train", batch_size=2, num_workers=2, shuffle=False, handler="warn")
    keys: Counter = Counter()
    for i, b in enumerate(loader):
        keys.update(b["key"])
        if i == 0:
            second = shard.run(f"s3://{prefix}", _cfg(example_shards, max_samples=3), progress=False)
    assert keys == expected and loader.errors == 0 and loader.shardset.version == first["version"]
    assert Counter(k for b in loader for k in b["key"]) == expected and loader.errors == 0
    assert loader.shardset.version == second.version != first["version"]
