"""Sample keys: one key per (dataset, video, frame, track), and every key parses back to its parts."""

import itertools

import pytest

from facepipe.ids import IdError, check_name, parse_key, sample_key, video_id_for


def test_parts_at_the_separator_cannot_collide():
    # before: sample_key("ds_", "x", ...) == sample_key("ds", "_x", ...) == "ds___x__..."
    with pytest.raises(IdError, match="dataset 'ds_'"):
        sample_key("ds_", "x", 0, 0)
    with pytest.raises(IdError, match="video_id '_x'"):
        sample_key("ds", "_x", 0, 0)
    for bad in ("", "a__b", "a.b", "a b", "_a", "a_"):
        with pytest.raises(IdError):
            check_name("video_id", bad)


def test_keys_are_unique_and_parse_back():
    names = ["a", "a_b", "a-b", "ab", "a_b_c", "x1", "1-x", "s_r"]
    seen = {}
    for ds, vid, frame, track in itertools.product(names, names, (0, 7, 123456), (0, 1, 12)):
        key = sample_key(ds, vid, frame, track)
        assert "." not in key  # webdataset splits member names at the first dot
        assert parse_key(key) == (ds, vid, frame, track)
        assert seen.setdefault(key, (ds, vid, frame, track)) == (ds, vid, frame, track)


def test_video_ids_from_paths_are_key_parts():
    for rel in ("_lead.mp4", "trail_.mp4", "a/__b__/c.mp4", "-x-/y.mp4", "ffpp/original_634.mp4", "日本/動画.mp4"):
        vid = video_id_for(rel)
        assert check_name("video_id", vid) == vid
