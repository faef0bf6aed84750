"""How often the loader reads ``index.json`` (issue 26): once per :func:`make_loader` (read and checked once, the
resolved :class:`~facepipe.data.index.ShardSet` passed along), and once more when a pass starts with
``follow_index`` (single process), never without it."""

from __future__ import annotations

import pytest

from facepipe.data import index as idx
from facepipe.data.loader import make_loader


@pytest.fixture
def reads(monkeypatch) -> dict[str, list]:
    """Every read of an index file (``_read_text``, the one place that opens it) and every check of one."""
    seen: dict[str, list] = {"read": [], "check": []}
    read, check = idx._read_text, idx.check_index

    def counted_read(url):
        seen["read"].append(url)
        return read(url)

    def counted_check(index, where):
        seen["check"].append(where)
        return check(index, where)

    monkeypatch.setattr(idx, "_read_text", counted_read)
    monkeypatch.setattr(idx, "check_index", counted_check)
    return seen


@pytest.mark.parametrize("kw", [{}, {"class_balance": True}, {"resampled": True, "epoch_samples": 8}])
def test_make_loader_reads_and_checks_the_index_once(example_shards, reads, kw):
    loader = make_loader(example_shards, "val", batch_size=4, num_workers=0, **kw)
    where = str(example_shards / "index.json")
    assert reads == {"read": [where], "check": [where]}
    len(loader), loader.state_dict(), loader.shardset.cells  # noqa: B018  nothing of these reads it again
    assert len(reads["read"]) == 1


def test_a_following_pass_reads_the_index_when_it_starts(example_shards, reads):
    loader = make_loader(example_shards, "val", batch_size=4, num_workers=0)
    for _ in range(2):
        for _ in loader:
            pass
    assert len(reads["read"]) == 1 + 2 and len(reads["check"]) == 3  # make_loader, then one per pass
    still = make_loader(example_shards, "val", batch_size=4, num_workers=0, follow_index=False)
    for _ in still:
        pass
    assert len(reads["read"]) == 3 + 1
