"""The cell mixer: one sample stream per (dataset, label) cell of a ``shard.layout: cells`` set, mixed by weight.

With shards that mix datasets and labels, weighting a dataset or a class means reading samples and dropping them
(rejection sampling), and a weight can only lower a share. With one shard series per (dataset, label) cell
(``shard.layout: cells``, the default) each stream is read only as far as it is needed, the way webdataset's
``RandomMix`` and megatron-energon's blends mix datasets. facepipe draws with *quotas* rather than probabilities,
so an epoch is a fixed list of samples with exact shares that a resumed job can continue
(:meth:`facepipe.data.FaceLoader.state_dict`):

- **Target shares.** No ``dataset_weights`` / ``class_balance``: each cell's own share (every sample exactly once
  per epoch). ``dataset_weights`` ``{d: w_d}``: dataset ``d`` gets ``w_d / sum(w)`` of the epoch (datasets left out
  of the dict get 0), its labels their own shares within it, or equal shares with ``class_balance``. Faces of
  undecided label (-1) get 0 whenever shares are set (the loss leaves them out). ``sbi.reals_only``: fake cells 0.
- **Quotas.** The epoch's length ``L`` (``epoch_samples``, default the samples of the cells with a share) is
  apportioned over the cells by target share (largest remainder), then each cell's quota over the (rank, worker)
  slots by the samples of that cell they hold, so the slots' quotas add up to the cell's exactly. A quota above a
  cell's samples reads it again (its shards reshuffled each cycle): up-weighting. One below reads only the first
  samples of the epoch's shuffled shard order: down-weighting without opening the rest.
- **Slots.** The shards of the cells with a share are dealt in (cell, shard) order over ranks, then workers, as
  ``split_by_node`` / ``split_by_worker`` deal a shard list, so every slot has shards when there are at least as
  many as slots.
- **Interleaving.** Each slot draws its next cell with probability proportional to the cell's remaining quota
  (a uniformly random interleaving of the epoch's list), seeded by (seed, rank, worker, epoch); without shuffling,
  cells follow one another in order. ``resampled``: every slot reads every shard of a cell, drawn with
  replacement, and each cell's quota is split evenly over the slots, so each pass still has the target shares
  exactly.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from facepipe.errors import ConfigError

log = logging.getLogger(__name__)

Cell = tuple[str, int]


def target_shares(cells: dict[Cell, int], weights: dict[str, float] | None, balance: bool,
                  reals_only: bool = False) -> dict[Cell, float]:
    """Each (dataset, label) cell's share of the stream (summing to 1 over the cells with a share).

    Args:
        cells: samples per (dataset, label) (the index's counts).
        weights: ``dataset_weights``; ``None`` keeps the datasets' own shares.
        balance: equal shares for the labels of each dataset.
        reals_only: fake (and undecided) cells get 0.

    Raises:
        ConfigError: ``weights`` names a dataset the set does not hold, or no cell is left with a share.
    """
    datasets = sorted({d for d, _ in cells})
    if weights:
        unknown = set(weights) - set(datasets)
        if unknown:
            raise ConfigError(f"dataset_weights names {sorted(unknown)}, shards hold {datasets}")
    shaped = bool(weights) or balance or reals_only
    live = {c: n for c, n in cells.items() if n > 0 and (not shaped or c[1] >= 0) and not (reals_only and c[1] != 0)}
    if not live:
        raise ConfigError(f"no (dataset, label) cell is left to read among {sorted(cells)}")
    w = {d: float(weights.get(d, 0.0)) if weights else float(sum(n for (dd, _), n in live.items() if dd == d))
         for d in datasets}
    total_w = sum(w[d] for d in {d for d, _ in live})
    if total_w <= 0:
        raise ConfigError(f"dataset_weights {weights} give every readable dataset weight 0")
    out = {}
    for (d, lab), n in live.items():
        here = {c: m for c, m in live.items() if c[0] == d}
        share = 1.0 / len(here) if balance else n / sum(here.values())
        out[(d, lab)] = w[d] / total_w * share
    return {c: s for c, s in out.items() if s > 0}


def apportion(total: int, sizes: Sequence[float]) -> list[int]:
    """``total`` split in integers proportional to ``sizes`` (largest remainder, ties to the first): they add up to
    ``total`` exactly."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if total <= 0 or sizes.sum() <= 0:
        return [0] * len(sizes)
    exact = total * sizes / sizes.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out.tolist()


@dataclass(frozen=True)
class CellStream:
    """What one (rank, worker) slot reads of one cell in a pass.

    Attributes:
        cell: (dataset, label).
        urls: this slot's shards of the cell (resampled: all of the cell's shards, drawn with replacement).
        quota: samples to take this pass.
        samples: the samples of ``urls`` (the index's count): the shards are read ``ceil(quota / samples)`` times
            at most, so broken samples shorten the pass rather than repeat others.
    """

    cell: Cell
    urls: tuple[str, ...]
    quota: int
    samples: int = 0
    resampled: bool = False


@dataclass(frozen=True)
class MixPlan:
    """The cell streams of a set (from the index), for any slot: :meth:`streams`."""

    shares: dict[Cell, float]
    shards: tuple[tuple[Cell, str, int], ...]  # (cell, url, samples) of the cells with a share, in (cell, url) order
    quotas: dict[Cell, int]

    @classmethod
    def build(cls, urls: Sequence[str], shard_cells: Sequence[dict[Cell, int]], weights: dict[str, float] | None,
              balance: bool, reals_only: bool, epoch_samples: int | None) -> MixPlan:
        """The plan of a ``cells`` set: shares (:func:`target_shares`), the shards to deal and each cell's quota."""
        cells: dict[Cell, int] = {}
        for sc in shard_cells:
            for c, n in sc.items():
                cells[c] = cells.get(c, 0) + n
        shares = target_shares(cells, weights, balance, reals_only)
        order = sorted(shares)
        shards = tuple(sorted(((next(iter(sc)), u, next(iter(sc.values()))) for u, sc in zip(urls, shard_cells)
                              if next(iter(sc)) in shares), key=lambda t: (order.index(t[0]), t[1])))
        total = epoch_samples or sum(cells[c] for c in shares)
        natural = not (weights or balance or reals_only) and epoch_samples is None
        quotas = {c: cells[c] for c in order} if natural else dict(zip(order, apportion(total,
                                                                                        [shares[c] for c in order])))
        return cls(shares, shards, quotas)

    def slots(self, world_size: int, num_workers: int) -> list[tuple[int, int]]:
        """(rank, worker) of each shard in :attr:`shards`: dealt over ranks, then over each rank's workers."""
        return [(k % world_size, (k // world_size) % num_workers) for k in range(len(self.shards))]

    def streams(self, rank: int, world_size: int, worker: int, num_workers: int,
                resampled: bool) -> list[CellStream]:
        """The cell streams of slot (``rank``, ``worker``)."""
        if resampled:
            slot = worker * world_size + rank  # the remainders go to one worker of each rank first: ranks stay even
            return [CellStream(c, tuple(u for cc, u, _ in self.shards if cc == c),
                               apportion(self.quotas[c], [1] * (world_size * num_workers))[slot],
                               sum(n for cc, _, n in self.shards if cc == c), resampled=True)
                    for c in sorted(self.shares)]
        where = self.slots(world_size, num_workers)
        out = []
        for c in sorted(self.shares):
            held = [(where[k], n) for k, (cc, _, n) in enumerate(self.shards) if cc == c]
            owners = sorted({slot for slot, _ in held})
            per = apportion(self.quotas[c], [sum(n for s, n in held if s == o) for o in owners])
            mine = (rank, worker)
            if mine in owners:
                urls = tuple(u for k, (cc, u, _) in enumerate(self.shards) if cc == c and where[k] == mine)
                out.append(CellStream(c, urls, per[owners.index(mine)], sum(n for s, n in held if s == mine)))
        return out

    def samples_of(self, rank: int, world_size: int, num_workers: int, resampled: bool = False) -> int:
        """Samples one pass gives rank ``rank`` (its workers' quotas together)."""
        return sum(s.quota for w in range(num_workers) for s in self.streams(rank, world_size, w, num_workers,
                                                                                resampled))


def _cell_samples(stream: CellStream, read: Callable[[Iterator[dict]], Iterator[dict]], rng: random.Random,
                  shuffle: bool) -> Iterator[dict]:
    """One cell's samples for a pass: its shards in a shuffled order (reshuffled every cycle) until the quota is met,
    in at most ``ceil(quota / samples)`` cycles (so a broken sample shortens the pass, never repeats another);
    resampled: shards drawn with replacement, endlessly (the mixer stops at the quota). Ends early (with a warning)
    when a whole cycle gives nothing (every shard of the cell broken)."""
    if stream.resampled:
        while True:
            got = 0
            for s in read(iter([{"url": rng.choice(stream.urls)}])):
                got += 1
                yield s
            if not got and not any(True for _ in read(iter({"url": u} for u in stream.urls))):
                log.warning("cell %s: no readable sample in its shards %s", stream.cell, list(stream.urls))
                return
    taken, cycle = 0, 0
    cycles = -(-stream.quota // max(1, stream.samples))
    while taken < stream.quota and cycle < cycles:
        urls = list(stream.urls)
        if shuffle:
            rng.shuffle(urls)
        got = 0
        for s in read(iter({"url": u} for u in urls)):
            yield s
            got += 1
            taken += 1
            if taken >= stream.quota:
                return
        if not got:
            log.warning("cell %s: no readable sample in its shards %s; %d of %d samples of its quota left out",
                        stream.cell, list(stream.urls), stream.quota - taken, stream.quota)
            return
        cycle += 1


def mix(streams: list[CellStream], read: Callable[[Iterator[dict]], Iterator[dict]], seed: int,
        shuffle: bool = True) -> Iterator[dict]:
    """The samples of ``streams`` interleaved: the next cell drawn with probability proportional to its remaining
    quota; without ``shuffle``, cell after cell. ``read`` turns ``{"url": ...}`` dicts
    into samples (webdataset's ``tarfile_to_samples``). A cell that ends before its quota (broken samples) leaves
    the rest of the pass to the others."""
    rng = random.Random(seed)
    its = {s.cell: _cell_samples(s, read, random.Random(rng.getrandbits(63)), shuffle) for s in streams}
    left = {s.cell: s.quota for s in streams if s.quota}
    while left:
        cells = list(left)
        c = rng.choices(cells, [left[x] for x in cells])[0] if shuffle else cells[0]
        try:
            s = next(its[c])
        except StopIteration:
            del left[c]
            continue
        left[c] -= 1
        if not left[c]:
            del left[c]
        yield s


__all__ = ["CellStream", "MixPlan", "apportion", "mix", "target_shares"]
