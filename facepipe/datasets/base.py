"""Adapter base: rows from a dataset's own layout -> a validated, leakage-checked manifest.

An adapter is one decorated function ``scan(root, cfg) -> list[Row]`` registered under the dataset's
name with its expected layout and the document it follows (``facepipe datasets`` prints them). Rows
carry the official label and, where the dataset publishes one, the official split; rows without a split
are assigned by :func:`group_split`: connected groups (every fake with its originals, every video sharing
an identity) go whole into one split, stratified by label with scikit-learn's ``StratifiedGroupKFold``.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import polars as pl
from pydantic import Field

from facepipe._registries import check_unique
from facepipe.config import Section
from facepipe.errors import InputError
from facepipe.ids import LABEL_NAMES, SPLITS, IdError, check_name, unique_video_ids
from facepipe.manifest import MANIFEST_SCHEMA, check_leakage

log = logging.getLogger(__name__)


class ManifestConfig(Section):
    """Parameters of the ``manifest`` stage (section ``manifest``).

    ``split_mode``: ``official`` uses a dataset's published split and groups the rest; ``group``
    ignores published splits and re-splits everything leak-free. ``fractions``: train/val/test shares
    for grouped videos (reached in whole groups, stratified by label; the reached shares are reported).
    ``max_group_share``: a group that must stay in one split may hold at most this share of the videos
    to split (else the split cannot honour ``fractions``: an error names the group). ``both_classes``: a
    non-empty val or test split of a dataset with both classes must hold both (else error).
    ``compression``: FF++/DFD folder (``raw``, ``c23``, ``c40``). ``methods``: manipulation methods to
    include (``None`` = the adapter's default set). ``identity_leakage``: ``error`` fails when a person
    appears in two splits, ``warn`` accepts it, ``auto`` is ``error`` except for official protocols
    that are published with shared identities (Celeb-DF's test list), which are reported with counts.
    A fake whose original sits in another split always fails, unless the adapter marks it as part of
    the official protocol (``protocol_note``; reported). ``missing_originals``: a fake whose listed
    original is absent -> ``error`` or ``warn``. ``missing_files``: a listed file that does not exist ->
    ``error``, or ``warn`` (counted and skipped, e.g. partial DFDC downloads). ``options``:
    adapter-specific settings (``facepipe datasets`` lists them).
    """

    split_mode: Literal["official", "group"] = "official"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_group_share: float = Field(0.5, gt=0.0, le=1.0)
    both_classes: bool = True
    compression: str = "c23"
    methods: Optional[tuple[str, ...]] = None
    identity_leakage: Literal["auto", "error", "warn"] = "auto"
    missing_originals: Literal["error", "warn"] = "error"
    missing_files: Literal["error", "warn"] = "error"
    options: dict[str, str] = {}


@dataclass
class Row:
    """One labelled video (or image-sequence folder) of a dataset.

    ``path`` is relative to the root (or absolute, for inputs outside it); ``sources`` are paths of the
    originals (first the target, whose frames the fake modifies) or ``dataset:video_id`` references to
    another dataset; ``video_id`` overrides the id derived from the path; ``protocol_note`` marks a row
    whose official protocol knowingly crosses splits.
    """

    path: str
    label: int
    method: str
    split: Optional[str] = None
    sources: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    compression: Optional[str] = None
    mask_path: Optional[str] = None
    video_id: Optional[str] = None
    protocol_note: Optional[str] = None
    candidates: Optional[tuple[str, ...]] = None
    exclude: Optional[str] = None


@dataclass(frozen=True)
class Adapter:
    """A registered layout: ``scan`` turns a root into rows; ``layout`` documents the expected tree and
    the document it follows; ``shared_identities`` says the official protocol puts the same people in
    several splits (identity overlap is then reported, not an error, under ``identity_leakage: auto``)."""

    name: str
    layout: str
    scan: Callable[[Path, ManifestConfig], list[Row]]
    shared_identities: bool = False


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str, layout: str, shared_identities: bool = False):
    """Decorator registering ``scan(root, cfg) -> list[Row]`` for dataset ``name``.

    Raises:
        ConfigError: another scan function already holds ``name`` (both named; the same one again replaces itself).
    """

    def deco(fn):
        old = _ADAPTERS.get(name)
        check_unique("dataset adapter", name, fn, old.scan if old else None)
        _ADAPTERS[name] = Adapter(name, layout.strip("\n"), fn, shared_identities)
        return fn

    return deco


def list_adapters() -> list[Adapter]:
    """Registered adapters by name."""
    return [_ADAPTERS[k] for k in sorted(_ADAPTERS)]


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``.

    Raises:
        InputError: unknown name, listing the known ones and close matches.
    """
    if name not in _ADAPTERS:
        close = difflib.get_close_matches(name, list(_ADAPTERS), n=3)
        raise InputError(f"unknown dataset adapter '{name}' (known: {', '.join(sorted(_ADAPTERS))})"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    return _ADAPTERS[name]


def layout_error(adapter: str, root: Path, problem: str) -> InputError:
    """An error naming the root, what is wrong, and the layout the adapter expects."""
    return InputError(f"{root}: not a {adapter} layout: {problem}\nexpected:\n{_ADAPTERS[adapter].layout}")


def components(rows: list[Row], keys: Optional[list[str]] = None) -> list[list[int]]:
    """Connected groups (union-find): fakes with their originals, and videos sharing an identity.

    Args:
        rows: the rows.
        keys: per row, the name its ``sources`` refer to it by (default its path).

    Returns:
        Lists of row indices, in order of their first member.
    """
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_key = {k: i for i, k in enumerate(keys or [r.path for r in rows])}
    first_with: dict[str, int] = {}
    for i, r in enumerate(rows):
        for src in r.sources:
            if src in by_key:
                union(i, by_key[src])
        for ident in r.identities:
            if ident in first_with:
                union(i, first_with[ident])
            else:
                first_with[ident] = i
    comps: dict[int, list[int]] = {}
    for i in range(len(rows)):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def _fold_counts(n_folds: int, fractions: tuple[float, float, float]) -> list[int]:
    """How many of ``n_folds`` equal folds each split gets: rounded shares, every non-zero share >= 1."""
    f = np.array(fractions, dtype=np.float64) / sum(fractions)
    counts = np.floor(f * n_folds).astype(int)
    counts[(f > 0) & (counts == 0)] = 1
    while counts.sum() > n_folds:
        counts[int(np.argmax(counts))] -= 1
    while counts.sum() < n_folds:
        counts[int(np.argmax(f * n_folds - counts))] += 1
    return counts.tolist()


def group_split(groups: list[list[int]], fixed: dict[int, str], labels: list[int],
                fractions: tuple[float, float, float], seed: int, max_group_share: float = 1.0,
                names: Optional[list[str]] = None,
                candidates: Optional[list[Optional[tuple[str, ...]]]] = None) -> list[str]:
    """Assign train/val/test to ``len(labels)`` items given groups that must stay together.

    Groups with an item of ``fixed`` split take that split (the leakage check reports a group with
    two). Free groups are split by scikit-learn's ``StratifiedGroupKFold`` (seeded) into folds of equal
    size, each keeping the label ratio as well as whole groups allow; folds go to test, val and train in
    proportion to ``fractions``. With fewer than three free groups, the groups go to the splits furthest
    below their target share, largest first. A free group whose items carry ``candidates`` goes only to
    the splits all of them allow (the fractions of the others are set to 0 for it): DFDC's training parts
    are split into train and val only, since its test set is published apart.

    Args:
        groups: lists of item indices.
        fixed: item index -> split.
        labels: per item, 0 real / 1 fake (the stratification target).
        fractions: train/val/test shares of the free items.
        seed: shuffles the folds.
        max_group_share: largest allowed share of the free items in one group.
        names: per item, a name for error messages.
        candidates: per item, the splits it may be assigned to (``None`` = all three).

    Returns:
        The split of every item.

    Raises:
        InputError: a free group holds more than ``max_group_share`` of the free items (names members), or
            its items allow no common split.
    """
    n = len(labels)
    out = [""] * n
    by_allowed: dict[tuple[str, ...], list[list[int]]] = {}
    for g in groups:
        fixed_splits = {fixed[i] for i in g if i in fixed}
        if fixed_splits:
            s = sorted(fixed_splits)[0]
            for i in g:
                out[i] = fixed.get(i, s)
            continue
        allowed = set(SPLITS)
        for i in g:
            if candidates is not None and candidates[i] is not None:
                allowed &= set(candidates[i])
        if not allowed:
            who = ", ".join((names or [str(i) for i in range(n)])[i] for i in g[:4])
            raise InputError(f"videos that must stay in one split allow no common split: {who}")
        by_allowed.setdefault(tuple(s for s in SPLITS if s in allowed), []).append(g)
    for allowed, free in by_allowed.items():
        f = tuple(fr if s in allowed else 0.0 for s, fr in zip(SPLITS, fractions))
        if not sum(f):  # the fractions give none of the allowed splits a share: spread evenly over them
            f = tuple(1.0 if s in allowed else 0.0 for s in SPLITS)
        _split_free(free, labels, f, seed, max_group_share, names, out)
    return out


def _split_free(free: list[list[int]], labels: list[int], fractions: tuple[float, float, float], seed: int,
                max_group_share: float, names: Optional[list[str]], out: list[str]) -> None:
    """:func:`group_split` for groups without a fixed split, writing into ``out``; a split whose fraction is 0
    gets nothing."""
    n_free = sum(len(g) for g in free)
    if not n_free:
        return
    big = max(free, key=len)
    if len(free) > 1 and len(big) / n_free > max_group_share:
        who = ", ".join((names or [str(i) for i in range(len(labels))])[i] for i in big[:4])
        raise InputError(f"one group of {len(big)} videos that must stay in one split (fakes with their originals, "
                         f"people across videos) is {len(big) / n_free:.0%} of the {n_free} videos to split "
                         f"(manifest.max_group_share {max_group_share:.0%}): {who}, ...; the fractions "
                         f"{list(fractions)} cannot be reached leak-free")
    share = np.array(fractions, dtype=np.float64) / sum(fractions)
    n_folds = min(20, len(free), max(np.bincount([labels[i] for g in free for i in g])))
    if n_folds < 3:  # too few groups (or videos of the larger class) for folds: place groups greedily
        target = share * n_free
        filled = np.zeros(3)
        for g in sorted(free, key=lambda g: (-len(g), g[0])):
            s = int(np.argmax(np.where(share > 0, target - filled, -np.inf)))
            for i in g:
                out[i] = SPLITS[s]
            filled[s] += len(g)
        return
    from sklearn.model_selection import StratifiedGroupKFold

    idx = np.array([i for g in free for i in g])
    gid = np.array([k for k, g in enumerate(free) for _ in g])
    y = np.array([labels[i] for i in idx])
    counts = _fold_counts(n_folds, fractions)  # train, val, test
    split_of_fold = ["test"] * counts[2] + ["val"] * counts[1] + ["train"] * counts[0]
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        for fold, (_, test_idx) in enumerate(skf.split(idx, y if len(set(y)) > 1 else np.zeros_like(y), gid)):
            for j in test_idx:
                out[int(idx[j])] = split_of_fold[fold]


def split_report(df: pl.DataFrame) -> dict:
    """Videos per split and label, and each split's share of all videos and of each label.

    Returns:
        ``{split: {"real": n, "fake": n, "share": x, "share_real": x, "share_fake": x}}``.
    """
    total = max(1, df.height)
    per_label = {lab: max(1, int((df["label"] == lab).sum())) for lab in (0, 1)}
    out = {}
    for s in SPLITS:
        d = df.filter(pl.col("split") == s)
        r, f = int((d["label"] == 0).sum()), int((d["label"] == 1).sum())
        out[s] = {"real": r, "fake": f, "share": round(d.height / total, 4),
                  "share_real": round(r / per_label[0], 4), "share_fake": round(f / per_label[1], 4)}
    return out


def build_manifest(adapter: str, root: str | Path, dataset: str, cfg: ManifestConfig,
                   report: Optional[dict] = None) -> pl.DataFrame:
    """Scan ``root`` with ``adapter`` and return the validated manifest (:data:`MANIFEST_SCHEMA`).

    Rows the official protocol leaves out (``Row.exclude``) are dropped, logged with their count per reason
    and, when ``report`` is given, recorded there as ``report["excluded"] = {reason: {"n": n, "examples":
    [paths]}}`` (the manifest stage stores it next to the split report).

    Raises:
        InputError: unknown adapter, wrong root or layout (the expected one is shown), a missing
            split file, a listed file that does not exist (``missing_files: error``), conflicting labels
            for one file, a fake whose original is missing (``missing_originals: error``), a group too
            large to split, a val/test split lacking a class, originals/identities crossing splits, or two
            files whose ids :func:`~facepipe.ids.unique_video_ids` cannot tell apart.
    """
    ad = get_adapter(adapter)
    check_name("dataset", dataset)
    root = Path(root)
    rows = _scan(ad, adapter, root, cfg, report)
    rows, seen = _present_rows(rows, adapter, root, cfg)
    orphans = [(r.path, s) for r in rows for s in r.sources if ":" not in s and s not in seen]
    if orphans:
        msg = (f"{root / orphans[0][0]}: fake whose original {orphans[0][1]} is missing "
               f"({len(orphans)} such fakes)")
        if cfg.missing_originals == "error":
            raise InputError(msg + "; set manifest.missing_originals: warn to keep them")
        log.warning(msg)
    splits = _splits(rows, adapter, root, cfg)
    try:
        df = _manifest_table(rows, seen, splits, dataset)
    except IdError as e:
        raise InputError(f"{root}: {e}") from None
    dup = df.group_by("video_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputError(f"{root}: two files map to video id '{dup['video_id'][0]}'")
    _check_manifest(df, ad, f"{root} ({adapter})", cfg)
    return df


def _scan(ad: Adapter, adapter: str, root: Path, cfg: ManifestConfig, report: Optional[dict]) -> list[Row]:
    """The adapter's rows of ``root`` less those the official protocol leaves out (logged, and recorded in
    ``report["excluded"]`` when ``report`` is given)."""
    if not root.is_dir():
        raise layout_error(adapter, root, "folder does not exist")
    rows = ad.scan(root, cfg)
    if not rows:
        raise layout_error(adapter, root, "no videos found")
    excluded = exclusions(rows)
    for reason, info in excluded.items():
        log.warning("%s (%s): %d video(s) left out by the official protocol: %s (e.g. %s)", root, adapter,
                    info["n"], reason, ", ".join(info["examples"]))
    if report is not None:
        report["excluded"] = excluded
    rows = [r for r in rows if r.exclude is None]
    if not rows:
        raise layout_error(adapter, root, "every video is left out by the protocol")
    return rows


def _present_rows(rows: list[Row], adapter: str, root: Path, cfg: ManifestConfig) -> tuple[list[Row], dict]:
    """Refuse a file listed twice; drop (``missing_files: warn``) or refuse listed files that do not exist.

    Returns:
        (the rows, ``{path: row}``).
    """
    seen: dict[str, Row] = {}
    for r in rows:
        if r.path in seen:
            if seen[r.path].label != r.label:
                raise InputError(f"{root / r.path}: conflicting labels ({seen[r.path].label} and {r.label}) "
                                 f"for one file in the {adapter} layout")
            raise InputError(f"{root / r.path}: listed twice by the {adapter} adapter")
        seen[r.path] = r
    missing = [r.path for r in rows if not (root / r.path).exists()]
    if missing:
        msg = (f"{root / missing[0]}: listed but missing ({len(missing)} missing files"
               + (f", e.g. {', '.join(missing[1:4])}" if len(missing) > 1 else "") + ")")
        if cfg.missing_files == "error":
            raise InputError(msg + "; set manifest.missing_files: warn to skip them")
        log.warning("%s; skipped (manifest.missing_files: warn)", msg)
        gone = set(missing)
        rows = [r for r in rows if r.path not in gone]
        seen = {r.path: r for r in rows}
        if not rows:
            raise layout_error(adapter, root, "no listed video is present")
    return rows, seen


def _splits(rows: list[Row], adapter: str, root: Path, cfg: ManifestConfig) -> list[str]:
    """Each row's split: the layout's own (official mode) kept, the rest assigned by :func:`group_split`."""
    if cfg.split_mode == "group":
        for r in rows:
            r.split = None
    fixed = {i: r.split for i, r in enumerate(rows) if r.split is not None}
    bad = {s for s in fixed.values() if s not in SPLITS}
    if bad:
        raise InputError(f"{root}: unknown split(s) {sorted(bad)} from the {adapter} layout")
    return group_split(components(rows), fixed, [r.label for r in rows], cfg.fractions, cfg.seed,
                       cfg.max_group_share, [r.path for r in rows],
                       [r.candidates if cfg.split_mode == "official" else None for r in rows])


def _manifest_table(rows: list[Row], seen: dict, splits: list[str], dataset: str) -> pl.DataFrame:
    """The rows as a :data:`MANIFEST_SCHEMA` table sorted by path (sources as video ids)."""
    derived = unique_video_ids(r.path for r in rows if not r.video_id)
    ids = {r.path: r.video_id or derived[r.path] for r in rows}
    return pl.DataFrame({
        "dataset": [dataset] * len(rows),
        "video_id": [ids[r.path] for r in rows],
        "path": [r.path for r in rows],
        "label": [r.label for r in rows],
        "method": [r.method for r in rows],
        "split": splits,
        # a source is a row's path (which may hold ':') before it is a dataset:video_id of another dataset
        "source_ids": [[ids[s] if s in seen else s for s in r.sources if s in seen or ":" in s] for r in rows],
        "compression": [r.compression for r in rows],
        "identity_ids": [sorted(set(r.identities)) for r in rows],
        "mask_path": [r.mask_path for r in rows],
        "protocol_note": [r.protocol_note for r in rows],
    }, schema=MANIFEST_SCHEMA).sort("path")


def _check_manifest(df: pl.DataFrame, ad: Adapter, where: str, cfg: ManifestConfig) -> None:
    """Leakage of originals (an error) and identities (``identity_leakage``) across splits; val and test hold both
    classes when the dataset has both (``both_classes``)."""
    check_leakage(df, where, identities=False, mode="error")
    mode = cfg.identity_leakage
    if mode == "auto":
        mode = "warn" if ad.shared_identities and cfg.split_mode == "official" else "error"
    leaks = check_leakage(df, where, identities=True, mode=mode)
    if leaks.identities and mode == "warn":
        log.warning("%s: %d identities appear in more than one split (%s protocol)", where, len(leaks.identities),
                    "official" if cfg.split_mode == "official" else "grouped")
    report = split_report(df)
    log.debug("%s: splits reached: %s", where, report)
    if cfg.both_classes and df["label"].n_unique() == 2:
        for s in ("val", "test"):
            if report[s]["real"] + report[s]["fake"] and not (report[s]["real"] and report[s]["fake"]):
                lacking = "fake" if not report[s]["fake"] else "real"
                raise InputError(f"{where}: the {s} split has no {lacking} video ({report[s]['real']} real, "
                                 f"{report[s]['fake']} fake): metrics there would be undefined; change "
                                 "manifest.fractions or seed, or set manifest.both_classes: false")


def exclusions(rows: list[Row], n_examples: int = 3) -> dict[str, dict]:
    """Rows an adapter marked ``exclude``, per reason: ``{reason: {"n": count, "examples": [paths]}}``."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.exclude is not None:
            e = out.setdefault(r.exclude, {"n": 0, "examples": []})
            e["n"] += 1
            if len(e["examples"]) < n_examples:
                e["examples"].append(r.path)
    return out


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (for deterministic choices that do not depend on the set)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


__all__ = ["Adapter", "LABEL_NAMES", "ManifestConfig", "Row", "build_manifest", "components", "exclusions", "get_adapter",
           "group_split", "layout_error", "list_adapters", "register_adapter", "split_report", "stable_fraction"]
