"""The command line: the commands of the README, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "idcrafter.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    res = cli("world", "sample", "--subjects", "2", "--seed", "3", "--split", "heldout", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_world_sample_writes_everything(sample):
    for name in ["ref_0.png", "ref_1.png", "clip.mp4", "sheet.png", "meta.json"]:
        assert (sample / name).is_file(), name
    meta = json.loads((sample / "meta.json").read_text())
    assert len(meta["subjects"]) == 2 and meta["caption"] and len(meta["boxes"]) == 9


def test_world_make(tmp_path):
    res = cli("world", "make", "--split", "train", "--num", "3", "--seed", "1", "--out", str(tmp_path / "d"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["num"] == 3


def test_judge_json(sample):
    meta = json.loads((sample / "meta.json").read_text())
    res = cli("judge", "--video", str(sample / "clip.mp4"), "--ref", str(sample / "ref_0.png"),
              "--ref", str(sample / "ref_1.png"), "--prompt", meta["caption"], "--json")
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["face_sim_mean"] > 0.6 and m["action_acc"] is not None and "total" in m


@pytest.mark.parametrize("args,needle", [
    (["world", "sample", "--subjects", "5", "--out", "x"], "between 1 and 4"),
    (["world", "make", "--split", "test", "--num", "2", "--out", "x"], "unknown split"),
    (["judge", "--video", "{s}/clip.mp4", "--ref", "{s}/missing.png"], "not found"),
    (["judge", "--video", "{s}/clip.mp4", "--ref", "{s}/corrupt.png"], "corrupt"),
    (["judge", "--video", "{s}/ref_0.png", "--ref", "{s}/ref_0.png"], "at least 2"),
    (["judge", "--video", "{s}/corrupt.png", "--ref", "{s}/ref_0.png"], "cannot decode"),
    (["judge", "--video", "{s}/clip.mp4", "--ref", "{s}/ref_0.png", "--prompt", "{caption}"], "reference"),
    (["world", "validate-judge", "--folder", "{s}"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(sample, args, needle):
    (sample / "corrupt.png").write_bytes(b"\x89PNG broken")
    caption = json.loads((sample / "meta.json").read_text())["caption"]
    res = cli(*[a.format(s=sample, caption=caption) for a in args])
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
