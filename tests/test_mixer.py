"""The cell mixer and exact resumption (issue 24 item 5): target shares and quotas in closed form, weights that
raise a share as well as lower it without reading samples only to drop them, every slot's shards disjoint, and a
pass killed after k batches that resumes with the next sample — two ranks x two workers, augmentation included."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from facepipe.data import make_loader
from facepipe.data.mixer import MixPlan, apportion, mix, target_shares
from facepipe.errors import ConfigError


def test_target_shares_and_apportion_closed_form():
    cells = {("a", 0): 60, ("a", 1): 20, ("b", 0): 10, ("b", 1): 10, ("a", -1): 5}
    natural = target_shares(cells, None, False)
    assert natural == pytest.approx({c: n / 105 for c, n in cells.items()})  # every sample once
    weighted = target_shares(cells, {"a": 1, "b": 1}, False)  # undecided faces get nothing once shares are set
    assert weighted == pytest.approx({("a", 0): 0.375, ("a", 1): 0.125, ("b", 0): 0.25, ("b", 1): 0.25})
    balanced = target_shares(cells, None, True)  # labels equal within a dataset, datasets keep their own shares
    assert balanced == pytest.approx({("a", 0): 0.4, ("a", 1): 0.4, ("b", 0): 0.1, ("b", 1): 0.1})
    assert target_shares(cells, {"b": 2}, True, reals_only=True) == pytest.approx({("b", 0): 1.0})
    with pytest.raises(ConfigError, match="names \\['c'\\]"):
        target_shares(cells, {"c": 1}, False)
    assert apportion(10, [1, 1, 1]) == [4, 3, 3] and apportion(7, [5, 0, 2]) == [5, 0, 2]
    assert sum(apportion(1001, [0.375, 0.125, 0.25, 0.25])) == 1001


def _synthetic(n_a: int = 10, n_b: int = 1, per: int = 10):
    """Dataset a: ``n_a`` shards of ``per`` real samples; dataset b: ``n_b`` shards of ``per`` real samples."""
    urls, cells, content = [], [], {}
    for d, n in (("a", n_a), ("b", n_b)):
        for i in range(n):
            u = f"{d}-{i}.tar"
            urls.append(u)
            cells.append({(d, 0): per})
            content[u] = [{"__key__": f"{d}{i}_{j}", "cell": (d, 0)} for j in range(per)]
    return urls, cells, content


def _reader(content, pulled: Counter):
    def read(src):
        for s in src:
            for sample in content[s["url"]]:
                pulled[s["url"]] += 1
                yield sample
    return read


def test_weights_raise_and_lower_shares_without_reading_samples_to_drop_them():
    urls, cells, content = _synthetic()
    plan = MixPlan.build(urls, cells, {"a": 1, "b": 1}, False, False, None)
    assert plan.quotas == {("a", 0): 55, ("b", 0): 55}  # 110 samples: a down from 100, b up from 10
    pulled = Counter()
    out = list(mix(plan.streams(0, 1, 0, 1, False), _reader(content, pulled), seed=1))
    got = Counter(s["cell"] for s in out)
    assert got == {("a", 0): 55, ("b", 0): 55}
    assert sum(n for u, n in pulled.items() if u.startswith("a")) == 55  # a: read only as far as its quota
    assert max(Counter(s["__key__"] for s in out if s["cell"] == ("b", 0)).values()) == 6  # b: 5.5 cycles
    # the interleaving is random, not a block of a then b
    first = [s["cell"][0] for s in out[:20]]
    assert 0 < first.count("b") < 20


def test_slots_hold_disjoint_shards_and_their_quotas_add_up():
    urls, cells, content = _synthetic(n_a=5, n_b=3, per=4)
    plan = MixPlan.build(urls, cells, None, False, False, None)
    seen: Counter = Counter()
    for rank in range(2):
        for w in range(2):
            streams = plan.streams(rank, 2, w, 2, False)
            assert streams, "every slot reads something"
            for s in streams:
                seen.update(s.urls)
                assert s.quota == s.samples  # natural shares: each sample exactly once
    assert seen == Counter(urls)
    assert sum(plan.samples_of(r, 2, 2) for r in range(2)) == 32


def _keys_and_sums(batches) -> list[tuple[str, float]]:
    return [(k, round(float(x.double().sum()), 3)) for b in batches for k, x in zip(b["key"], b["image"])]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_pass_killed_after_k_batches_resumes_with_the_next_sample(example_cell_shards, rank):
    """Two ranks x two workers, augmentation on: the batches before the kill and after the resume together are one
    uninterrupted epoch's samples, each exactly once, augmented identically; the pass after matches too."""
    kw = dict(batch_size=2, num_workers=2, rank=rank, world_size=2, seed=5, augment=True, image_size=32)
    ref = make_loader(example_cell_shards, "val", **kw)
    full = _keys_and_sums(ref)
    after = _keys_and_sums(ref)  # epoch 1
    assert len(full) == len({k for k, _ in full})
    killed = make_loader(example_cell_shards, "val", **kw)
    it = iter(killed)
    first = _keys_and_sums([next(it) for _ in range(3)])
    state = json.loads(json.dumps(killed.state_dict()))  # what a checkpoint stores
    assert state["epoch"] == 0 and state["batches"] == 3 and set(state["positions"]) <= {"0", "1"}
    del it, killed
    resumed = make_loader(example_cell_shards, "val", **kw)
    resumed.load_state_dict(state)
    rest = _keys_and_sums(resumed)
    assert sorted(first + rest) == sorted(full)  # no sample lost or repeated, the same augmentation draws
    assert sum(resumed.history[-1]["shares"].values()) == pytest.approx(1.0)
    assert resumed.history[-1]["samples"] == len(full)
    assert sorted(_keys_and_sums(resumed)) == sorted(after)


def test_two_ranks_together_read_the_split_once(example_cell_shards):
    index = json.loads((example_cell_shards / "index.json").read_text())
    keys = [k for r in range(2)
            for b in make_loader(example_cell_shards, "val", batch_size=4, num_workers=2, rank=r, world_size=2)
            for k in b["key"]]
    assert len(keys) == len(set(keys)) == index["splits"]["val"]["samples"]


def test_class_balance_raises_the_minority_and_logs_the_realised_shares(example_cell_shards):
    index = json.loads((example_cell_shards / "index.json").read_text())
    cells = Counter()
    for sh in index["splits"]["val"]["shards"]:
        cells.update(sh["cells"])
    assert cells["example:real"] == 2 * cells["example:fake"]  # the example's val split: twice as many reals
    loader = make_loader(example_cell_shards, "val", batch_size=4, num_workers=0, class_balance=True)
    got = [(k, int(lab)) for b in loader for k, lab in zip(b["key"], b["label"])]
    n = sum(cells.values())
    assert Counter(lab for _, lab in got) == {0: n // 2, 1: n // 2}  # the fakes up-weighted, the reals down
    assert loader.history[-1]["shares"] == {"example:fake": 0.5, "example:real": 0.5}
    fakes = Counter(k for k, lab in got if lab == 1)
    assert max(fakes.values()) == 2 and len(fakes) == cells["example:fake"]


def test_a_state_from_another_configuration_is_refused(example_cell_shards):
    a = make_loader(example_cell_shards, "val", batch_size=2, num_workers=0, rank=0, world_size=2)
    next(iter(a))
    b = make_loader(example_cell_shards, "val", batch_size=2, num_workers=0, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="world_size 2 there, 1 here"):
        b.load_state_dict(a.state_dict())


def test_resampled_passes_keep_the_target_shares_exactly(example_cell_shards):
    """resampled=True (what `facepipe train` streams): shards drawn with replacement, yet every pass of every rank
    delivers the cells' quotas exactly."""
    for rank in range(2):
        loader = make_loader(example_cell_shards, "val", batch_size=4, num_workers=2, rank=rank, world_size=2,
                             resampled=True, epoch_samples=20, class_balance=True, seed=rank)
        for _ in range(2):
            got = Counter(int(lab) for b in loader for lab in b["label"])
            assert got == {0: 5, 1: 5}
        assert [h["shares"] for h in loader.history] == [{"example:fake": 0.5, "example:real": 0.5}] * 2
