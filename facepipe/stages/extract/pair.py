"""A fake compared with its original: the frames kept for the temporal-alignment test, the test and its lag
correction, the pair's verdict, and the faces rescored against the pair's noise floor (see
:mod:`facepipe.faces.labels`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facepipe.ids import IMAGE_EXTS
from facepipe.stages.extract.config import ExtractConfig
from facepipe.stages.extract.crops import encode_image
from facepipe.stages.extract.state import KeptFace, VideoState

log = logging.getLogger(__name__)


def rescore_faces(st: VideoState, faces: list[KeptFace], cfg: ExtractConfig) -> list[float | None]:
    """Score the compared faces against the pair's noise floor (:func:`facepipe.faces.labels.face_threshold`) and
    write their difference masks; returns the scores."""
    from facepipe.faces.labels import face_threshold, pair_threshold, rescore

    floor = pair_threshold(st.thresholds, cfg.labels)
    for k in faces:
        if k.diff is None and k.diff_crop is None:
            continue
        thr = face_threshold(k.frame_thr, floor, cfg.labels)
        (sc,), (mk,) = rescore([k.diff], [k.diff_crop], thr)
        k.score = sc
        if mk is not None:
            k.mask = f"{k.name}_mask.png"
            (st.tmp_dir / k.mask).write_bytes(encode_image(mk, "png", 0))
        k.diff = k.diff_crop = None
    return [k.score for k in faces]


def decode_original(st: VideoState, indices: list[int]) -> dict[int, np.ndarray] | None:
    """The original's frames at ``indices`` (decord numbering = the sampler's), those that exist; ``None`` when
    decord cannot read it."""
    try:
        import decord

        vr = decord.VideoReader(str(st.reference.path), ctx=decord.cpu(0), num_threads=1)
        want = sorted({i for i in indices if 0 <= i < len(vr)})
        return dict(zip(want, vr.get_batch(want).asnumpy())) if want else {}
    except Exception as e:  # noqa: BLE001  decord raises its own error types
        log.info("%s: temporal-alignment test skipped (decord: %s)", st.job.rel, str(e)[:200])
        return None


def correct_lag(st: VideoState, cfg: ExtractConfig, lag: int) -> bool:
    """Compare every kept fake frame ``i`` with the original's frame ``i + lag`` instead (a constant temporal
    offset); frames whose partner does not exist are not judged. False when not possible (thinned frames)."""
    from dataclasses import replace

    from facepipe.faces.labels import frame_evidence

    if st.probes_thinned:
        return False
    got = decode_original(st, [p[0] + lag for p in st.probes])
    if got is None:
        return False
    st.backgrounds, st.thresholds = [], []
    for fidx, small, _, pos, s in st.probes:
        kept = st.per_frame[pos]
        o = got.get(fidx + lag)
        for k in kept:
            k.score = k.diff = k.diff_crop = None
            k.frame_thr = float("nan")
        if o is None:
            continue
        faces = [replace(k.face, box=k.face.box * s, landmarks=k.face.landmarks * s) for k in kept]
        mats = []
        for k in kept:
            m = np.asarray(k.matrix, np.float64).copy()
            m[:, :2] /= s
            mats.append(m)
        ev = frame_evidence(small, o, faces, mats, cfg.align.size, cfg.labels)
        st.backgrounds.append(ev.background)
        st.thresholds.append(ev.threshold)
        for k, sc, dv, dc in zip(kept, ev.scores, ev.diffs, ev.diff_crops):
            k.score, k.diff, k.diff_crop, k.frame_thr = sc, dv, dc, ev.threshold
    return True


def temporal_check(st: VideoState, cfg: ExtractConfig) -> tuple[int | None, str]:
    """The pair's temporal-alignment test (:func:`facepipe.faces.labels.probe_lag` on ``lag_probes`` probes spread
    over the compared frames, the original's neighbouring frames decoded with decord).

    Returns:
        (the pair's lag: 0 when aligned or not testable (a still, an image folder, a file decord cannot
        read), ``None`` when not constant; the probes' evidence as text).
    """
    from facepipe.faces.labels import pair_lag, probe_lag, to_working

    lab = cfg.labels
    ref = st.reference
    if lab.max_lag <= 0 or ref is None or not st.probes or st.sampler.n_sampled <= 1:
        return 0, ""
    path = Path(ref.path)
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        return 0, ""
    n_probe = min(lab.lag_probes, len(st.probes))
    pick = [st.probes[i] for i in np.unique(np.linspace(0, len(st.probes) - 1, n_probe).round().astype(int))]
    got = decode_original(st, [p[0] + lag for p in pick for lag in range(-lab.max_lag, lab.max_lag + 1)])
    if got is None:
        return 0, ""
    lags, stats = [], []
    for fidx, small, boxes, _, _ in pick:
        h, w = small.shape[:2]
        o0 = got.get(fidx)
        if o0 is None or abs(o0.shape[1] / o0.shape[0] - w / h) > 0.02 * w / h:
            return 0, ""  # decord numbers or orients the frames otherwise: not testable
        originals = {lag: to_working(got[fidx + lag], (h, w)) for lag in range(-lab.max_lag, lab.max_lag + 1)
                     if fidx + lag in got}
        lag, stat = probe_lag(small.astype(np.float32), boxes, originals, lab)
        lags.append(lag)
        stats.append(stat)
    detail = ", ".join(f"frame {p[0]}: " + ("no clear lag" if lg is None else f"lag {lg:+d}") + " ("
                       + " ".join(f"{k:+d}:{v:.2f}" for k, v in sorted(st_.items())) + ")"
                       for p, lg, st_ in zip(pick, lags, stats))
    return pair_lag(lags), f"head-region difference by lag, grey levels: {detail}"


def _median_background(st: VideoState) -> float | None:
    bgs = [b for b in st.backgrounds if b == b]
    return float(np.median(bgs)) if bgs else None


def _align_in_time(st: VideoState, cfg: ExtractConfig) -> str | None:
    """Run the temporal-alignment test on a pair still compared: a constant lag is corrected (the fake's frames
    compared with the original's shifted ones, the row's ``background_diff`` recomputed), an inconsistent or
    uncorrectable one ends the comparison. Returns the correction made, as text, or ``None``."""
    lag, evidence = temporal_check(st, cfg)
    if lag is None:
        st.compare, st.pair_note = False, f"temporal_offset: no constant offset; {evidence}"
    elif lag != 0 and correct_lag(st, cfg, lag):
        st.row["background_diff"] = _median_background(st)
        return f"temporal offset {lag:+d} corrected: fake frame i compared with original frame i{lag:+d}"
    elif lag != 0:
        st.compare, st.pair_note = False, f"temporal_offset: {lag:+d} frames, not corrected; {evidence}"
    return None


def pair_verdict(st: VideoState, cfg: ExtractConfig, faces: list[KeptFace]) -> list[float | None] | None:
    """Decide whether a fake is compared with its original (background difference, temporal alignment) and, when it
    is, score ``faces`` (the kept ones) and write their masks; fills the row's ``background_diff`` and
    ``pair_check``.

    Returns:
        The faces' manipulation scores, or ``None`` when the pair is not compared (labels then by policy).
    """
    row = st.row
    if row.get("original_id") is None:
        return None
    bg = row["background_diff"] = _median_background(st)
    if st.compare and bg is not None and bg > cfg.labels.max_background_diff:
        st.compare = False
        st.pair_note = (f"median background difference {bg:.1f} grey levels > {cfg.labels.max_background_diff}: "
                        "not the same frames")
    corrected = None
    if st.compare and bg is not None:
        corrected = _align_in_time(st, cfg)
        bg = row["background_diff"]
    if st.compare and bg is not None:
        scores = rescore_faces(st, faces, cfg)
        row["pair_check"] = (f"aligned (background difference {bg:.2f})" if corrected is None else
                             f"aligned after {corrected} (background difference {bg:.2f})")
        return scores
    if st.compare:
        st.pair_note = "no sampled frame of the fake had a face and background to compare"
    return None
