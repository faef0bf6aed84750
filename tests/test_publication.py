"""Readers during publication (issue 27, item 3): a loader streaming set v1 while ``facepipe shard`` publishes v2
finishes its pass on v1 (a replaced set stays ``shard.grace_hours``), and its next pass reads v2."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from facepipe.data.loader import make_loader
from facepipe.stages import shard


def _cfg(example_shards, **kw) -> shard.ShardConfig:
    """The example's set in shards of 2 samples (several per split)."""
    root = example_shards.parent
    return shard.ShardConfig(inputs=(shard.ShardInput(dataset="example", extract=str(root / "extract"),
                                                      manifest=str(root / "manifest.parquet")),),
                             **{"max_samples": 2, "layout": "mixed", **kw})


def _pass_publishing(loader, publish) -> Counter:
    """One pass; ``publish()`` runs after its first batch."""
    keys: Counter = Counter()
    for i, b in enumerate(loader):
        keys.update(b["key"])
        if i == 0:
            publish()
    return keys


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_pass_finishes_on_the_set_it_began_and_the_next_pass_reads_the_new_one(example_shards, tmp_path, workers):
    out = tmp_path / "shards"
    v1 = shard.run(out, _cfg(example_shards), progress=False)
    expected = Counter(k for b in make_loader(out, "train", batch_size=2, num_workers=0, shuffle=False) for k in b["key"])
    assert len(expected) >= 6 and set(expected.values()) == {1}
    loader = make_loader(out, "train", batch_size=2, num_workers=workers, shuffle=False, handler="warn")
    v2 = None

    def publish():
        nonlocal v2
        v2 = shard.run(out, _cfg(example_shards, max_samples=3), progress=False)

    keys = _pass_publishing(loader, publish)
    assert v2.version != v1.version
    assert json.loads((out / "index.json").read_text())["version"] == v2.version
    assert keys == expected and loader.errors == 0  # the pass under way finished on v1, every sample once
    assert loader.shardset.version == v1.version
    assert (out / v1.version / shard.REPLACED_NAME).exists()  # kept, with the time it was replaced
    keys = Counter(k for b in loader for k in b["key"])
    assert loader.shardset.version == v2.version  # the next pass reads the new set
    assert keys == expected and loader.errors == 0
    assert {p.rsplit("/", 2)[-2] for p in loader.shardset.urls} == {v2.version}


@pytest.mark.slow
def test_without_a_grace_period_the_pass_under_way_loses_its_shards(example_shards, tmp_path):
    """The control: ``grace_hours: 0`` removes v1 as v2 is published, and the pass reading v1 loses samples (named
    errors), so the grace period is what kept the pass above whole."""
    out = tmp_path / "shards"
    shard.run(out, _cfg(example_shards, grace_hours=0), progress=False)
    loader = make_loader(out, "train", batch_size=2, num_workers=0, shuffle=False, handler="warn")
    keys = _pass_publishing(loader, lambda: shard.run(out, _cfg(example_shards, max_samples=3, grace_hours=0),
                                                        progress=False))
    assert loader.errors > 0 and sum(keys.values()) < loader.shardset.samples
    assert sorted(p.name for p in out.glob("set-*")) == [json.loads((out / "index.json").read_text())["version"]]


def test_following_can_be_turned_off_and_is_off_for_ranks(example_shards, tmp_path):
    out = tmp_path / "shards"
    v1 = shard.run(out, _cfg(example_shards), progress=False)
    loader = make_loader(out, "train", batch_size=4, num_workers=0, shuffle=False, follow_index=False)
    assert sum(len(b["key"]) for b in loader) == v1.samples["train"]
    ranked = make_loader(out, "train", batch_size=4, num_workers=0, shuffle=False, rank=0, world_size=2)
    shard.run(out, _cfg(example_shards, max_samples=3), progress=False)
    assert sum(len(b["key"]) for b in loader) == v1.samples["train"]
    assert loader.shardset.version == v1.version
    list(ranked)  # a rank of a multi-process job keeps its set too (ranks must not switch at different passes)
    assert ranked.shardset.version == v1.version


class _Store:
    """An in-memory folder for retire_sets (what _LocalSets and RemoteSet provide)."""

    def __init__(self, sets):
        self.files, self.sets = {}, set(sets)

    def read(self, name):
        return self.files.get(name)

    def write(self, name, data):
        self.files[name] = data

    def delete(self, name):
        self.files.pop(name, None)

    def remove_set(self, name):
        self.sets.discard(name)
        self.files = {k: v for k, v in self.files.items() if not k.startswith(name + "/")}


def test_the_grace_rule():
    store = _Store(["set-a", "set-b"])
    h = 3600.0
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=0.0) == []
    assert json.loads(store.files["set-a/_replaced.json"]) == {"replaced_at": 0.0, "by": "set-b"}
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=23.9 * h) == []  # within the grace
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=24 * h) == ["set-a"]
    assert store.sets == {"set-b"} and store.files == {}
    # a set published again is current again: its old marker goes, and its grace starts when it is next replaced
    store = _Store(["set-a", "set-b"])
    shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=0.0)
    shard.retire_sets(["set-a", "set-b"], "set-a", 24, store, now=10 * h)
    assert "set-a/_replaced.json" not in store.files and "set-b/_replaced.json" in store.files
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=30 * h) == []  # replaced again at 30 h
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=53.9 * h) == []
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 24, store, now=54 * h) == ["set-a"]
    store = _Store(["set-a", "set-b"])
    store.files["set-a/_replaced.json"] = b"{not json"  # an unreadable marker restarts the grace
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 0.5, store, now=100.0) == []
    assert shard.retire_sets(["set-a", "set-b"], "set-b", 0, store, now=100.0) == ["set-a"]
