"""What the command line says: defaults in --help, one summary table, each bad file named once, plurals, no FFmpeg
noise, --shards everywhere."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from facepipe.cli import app


def _help(*cmd: str) -> str:
    r = CliRunner().invoke(app, [*cmd, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return re.sub(r"\s+", " ", r.output)


def test_help_shows_the_built_in_defaults_of_options_that_params_can_override():
    from facepipe.cli._common import HEAVY_DEFAULTS, model_default
    from facepipe.cli.pipeline import EXTRACT_FLAGS
    from facepipe.stages.extract.config import ExtractConfig
    from facepipe.stages.train import TrainConfig

    text = _help("extract")
    for flag in ("--num-frames", "--size", "--margin", "--min-score", "--workers", "--select", "--face-detector"):
        name = flag.lstrip("-").replace("-", "_")
        want = model_default(ExtractConfig, EXTRACT_FLAGS[name])
        assert re.search(re.escape(flag) + r"[^\[]*\[default: " + re.escape(str(want)) + r"\]", text), (flag, want)
    assert "[default: 32]" in text and "[default: 256]" in text
    # train's defaults are written out (its module imports torch): they must be TrainConfig's
    written = HEAVY_DEFAULTS["facepipe.stages.train:TrainConfig"]
    assert written == {k: getattr(TrainConfig(), k) for k in written}
    train = _help("train")
    assert "[default: resnet18]" in train and "[default: 1000]" in train
    assert "[default: test]" in _help("evaluate") and "[default: 16]" in _help("explain")


def test_bad_files_are_named_once_with_a_hint_and_no_ffmpeg_noise(face_video_dir, tmp_path, capfd):
    d = tmp_path / "videos"
    d.mkdir()
    good = next(face_video_dir.glob("*.mp4"))
    (d / good.name).write_bytes(good.read_bytes())
    data = good.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])  # an interrupted download (FFmpeg: "partial file")
    (d / "notes.mp4").write_text("not a video")
    r = CliRunner().invoke(app, ["extract", "--video-dir", str(d), "--out", str(tmp_path / "out"), "--workers", "0",
                                 "--num-frames", "4", "--face-detector", "mtcnn", "--no-progress"])
    assert r.exit_code == 0, r.output
    err = capfd.readouterr()
    everything = r.output + err.out + err.err
    assert everything.count("notes.mp4") == 1 and everything.count("cut.mp4") == 1
    assert str(d) not in r.output.split("->")[0]  # the bad files' lines do not repeat the absolute path
    assert "partial file" not in everything and "\x1b[" not in everything  # FFmpeg's own lines stay out
    assert "extract: 3 videos (3 processed" in r.output
    assert re.search(r"unsupported +1 +not a video or photo", r.output)
    assert re.search(r"decode_error +1 +damaged or truncated file", r.output)
    assert "status: ok=" not in r.output  # one table, not a line of counts beside it


def test_plural():
    from facepipe.cli._common import plural

    assert (plural(1, "video"), plural(2, "video"), plural(0, "shard")) == ("1 video", "2 videos", "0 shards")


def test_inspect_takes_shards_like_every_other_command(example_shards, tmp_path):
    runner = CliRunner()
    by_option = runner.invoke(app, ["inspect", "--shards", str(example_shards), "--n", "2", "--out",
                                    str(tmp_path / "a.png")])
    by_argument = runner.invoke(app, ["inspect", str(example_shards), "--n", "2", "--out", str(tmp_path / "b.png")])
    assert by_option.exit_code == 0 and by_option.output.split("contact")[0] == by_argument.output.split("contact")[0]
    neither = runner.invoke(app, ["inspect"])
    assert neither.exit_code != 0 and "--shards" in str(neither.exception)


@pytest.mark.parametrize("cmd", ["inspect", "train", "evaluate", "explain", "features", "benchmark"])
def test_every_command_that_reads_shards_takes_shards(cmd):
    assert "--shards" in _help(cmd)


def test_models_cite_no_internal_files():
    r = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert r.exit_code == 0 and "seeds/" not in r.output and "shared/" not in r.output


def test_ffmpeg_messages_only_with_verbose(face_video_dir, tmp_path, capfd, caplog, monkeypatch):
    """FFmpeg's own messages (PyAV's "moov atom not found" for an MP4 cut before its index) go through Python logging
    (loggers ``libav.*``) with -v only; without it nothing of FFmpeg's reaches the terminal, and the file's own line
    (status, facepipe's message) says what is wrong."""
    import logging

    monkeypatch.setenv("FACEPIPE_VERBOSE", "0")  # -v sets it (for the workers): restored (unset) after the test
    data = next(face_video_dir.glob("*.mp4")).read_bytes()
    d = tmp_path / "v"
    d.mkdir()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    args = ["extract", "--video-dir", str(d), "--workers", "0", "--num-frames", "4", "--face-detector", "mtcnn",
            "--no-progress", "--no-contact-sheet"]
    caplog.set_level(logging.DEBUG, logger="libav")
    quiet = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    q = capfd.readouterr()
    assert quiet.exit_code == 0 and "cut.mp4: decode_error: MP4 container without its index" in quiet.output
    assert not [r for r in caplog.records if r.name.startswith("libav")]
    assert "moov atom not found" not in quiet.output + q.out + q.err  # (facepipe's own line says "moov atom missing")
    loud = CliRunner().invoke(app, ["-v", *args, "--out", str(tmp_path / "b")])
    assert loud.exit_code == 0
    assert any("moov atom not found" in r.getMessage() for r in caplog.records if r.name.startswith("libav"))


@pytest.mark.parametrize("case", ["file", "under_a_file"])
def test_an_unusable_out_is_one_line_naming_it(case, face_video_dir, tmp_path):
    """--out on an existing file, or below one: one error line naming the path and the cause, no traceback
    (FileExistsError / NotADirectoryError from the lock's mkdir before)."""
    f = tmp_path / "afile"
    f.write_text("x")
    out = f if case == "file" else f / "sub"
    r = CliRunner().invoke(app, ["extract", "--video-dir", str(face_video_dir), "--out", str(out), "--workers", "0"])
    assert r.exit_code == 1
    msg = str(r.exception)
    assert str(out) in msg and ("exists and is a file" if case == "file" else f"{f} is a file, not a folder") in msg
    assert "Traceback" not in r.output
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "facepipe", "extract", "--video-dir", str(face_video_dir), "--out",
                        str(out)], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [f"facepipe: error: {msg}"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_extract_says_how_far_it_got_and_leaves_no_temporary_files(sig, code, face_video_dir, tmp_path):
    """Ctrl-C / SIGTERM while a video is in flight (one hangs by fault injection, the other finishes first): one
    summary line, exit 130 / 143, no temporary folder left, and the rerun resumes (the finished video is skipped)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facepipe", "extract", "--video-dir", str(face_video_dir), "--out", str(out),
           "--workers", "2", "--num-frames", "4", "--face-detector", "mtcnn", "--no-progress"]
    env = {**os.environ, "FACEPIPE_TEST_FAULT": "hang:single"}
    # as from a terminal: SIGINT not inherited as ignored (a shell's background job ignores it, Python then too)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((out / "_parts").glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the hung video is in flight
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    lines = [line for line in err.splitlines() if line.startswith("facepipe:")]
    assert lines == ["facepipe: extract: interrupted after 1 of 2 videos (0 done before); the finished ones are kept "
                     "(their part files), the tables are not updated: rerun the same command to resume"], err
    assert "Traceback" not in err
    assert not [q for q in out.rglob("*") if ".tmp-" in q.name]
    r = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "(1 processed, 1 unchanged since the last run)" in r.stdout, r.stdout + r.stderr
