"""Links of a shipped pipeline: relative to a sibling folder, absolute elsewhere."""

import json
import os
import shutil

import pytest

from idcrafter.errors import MissingWeightsError
from idcrafter.linking import LINKS_FILE, check_links, fingerprint, relink_siblings


def _component(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"z_dim": 16}')
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 10)
    return folder


def _pipeline(folder, links):
    folder.mkdir(parents=True)
    entries = {}
    for name, target in links.items():
        os.symlink(str(target.resolve()), str(folder / name), target_is_directory=True)
        entries[name] = {"target": str(target.resolve()), **fingerprint(target)}
    (folder / LINKS_FILE).write_text(json.dumps(entries))
    return folder


def test_links_to_siblings_become_relative_and_survive_a_move(tmp_path):
    assets = tmp_path / "repo" / "assets" / "checkpoints"
    vae = _component(assets / "sprites-vae")
    text = _component(tmp_path / "models" / "umt5")
    tmp = _pipeline(assets / ".tmp-export", {"vae": vae, "text_encoder": text})
    assert relink_siblings(tmp, assets / "sprites-sft") == ["vae"]
    assert os.readlink(tmp / "vae") == "../sprites-vae"
    assert os.path.isabs(os.readlink(tmp / "text_encoder"))  # outside assets/checkpoints: unchanged
    assert json.loads((tmp / LINKS_FILE).read_text())["vae"]["target"] == "../sprites-vae"
    os.replace(tmp, assets / "sprites-sft")
    clone = tmp_path / "clone"
    shutil.copytree(tmp_path / "repo", clone, symlinks=True)  # what a git clone elsewhere holds
    shutil.rmtree(tmp_path / "repo")
    found = check_links(clone / "assets" / "checkpoints" / "sprites-sft")
    assert found["vae"] == str((clone / "assets" / "checkpoints" / "sprites-vae").resolve())


def test_a_missing_sibling_is_reported(tmp_path):
    assets = tmp_path / "checkpoints"
    vae = _component(assets / "sprites-vae")
    out = _pipeline(assets / "model", {"vae": vae})
    relink_siblings(out, out)
    shutil.rmtree(vae)
    with pytest.raises(MissingWeightsError, match="vae"):
        check_links(out)
