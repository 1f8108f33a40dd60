"""Linked components: frozen weights a pipeline folder references instead of copying.

A Wan2.1 pipeline's UMT5 encoder (11 GB in bf16), its VAE and a Qwen2.5-VL grounder (16 GB)
never change in training; copying them into every checkpoint and export would cost about 34 GB a
folder. A pipeline built from local folders remembers where each frozen component came from
(`pipe.component_sources`, set by `idcrafter.builder` and by loading a linked folder), and
`save_pretrained` then writes that component as a **symbolic link** to its source folder:

    my-pipeline/
      model_index.json          # as diffusers writes it: every component listed with its class
      transformer/              # the trained weights, always copied
      tokenizer/ scheduler/ vlm_tokenizer/ vlm_processor/   # small files, always copied
      vae -> /models/Wan2.1-T2V-1.3B-Diffusers/vae          # absolute links
      text_encoder -> /models/Wan2.1-T2V-1.3B-Diffusers/text_encoder
      vlm -> /models/Qwen2.5-VL-7B-Instruct
      links.json                # per link: its target and a fingerprint of what was linked

Resolution at load time: the operating system follows the link, so diffusers' own loader (and
`DiffusionPipeline.from_pretrained`) reads the component from its source folder unchanged.
`IDCrafterPipeline.from_pretrained` first checks every link in `links.json`: the target must
exist and still have the fingerprint it had when the pipeline was saved (SHA-256 of its
config.json and the names and sizes of its weight files); otherwise one line says which
component points where and how to fix it (restore the folder, or point the link at its new
place with `ln -sfn NEW_PATH FOLDER/COMPONENT`). Links are absolute, so a pipeline folder can
be moved or copied with its links (`cp -a`, `shutil.copytree(..., symlinks=True)`); `cp -rL`
(or `save_pretrained(..., link_frozen=False)`) makes a self-contained copy.

Only components that hold weights and are loaded unchanged from a folder are linked (`vae`,
`text_encoder`, `vlm`, `subject_encoder`); tokenizers, the image processor and the scheduler
are small and are always written, so settings made at build time (e.g. the VLM's `max_pixels`)
are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from idcrafter.errors import CorruptFileError, InputError, MissingWeightsError

LINKABLE = ("vae", "text_encoder", "vlm", "subject_encoder")
LINKS_FILE = "links.json"
WEIGHT_SUFFIXES = (".safetensors", ".json")


def fingerprint(folder: Path) -> dict[str, Any]:
    """SHA-256 of config.json and (name, size) of every weight file: cheap, and changes when
    the folder is replaced by another model."""
    cfg = folder / "config.json"
    digest = hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else None
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors")
    return {"config_sha256": digest, "weights": [list(f) for f in files]}


def _make_link(path: Path, target: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        raise InputError(f"cannot link {path.name} into {path.parent}: {path} already holds a copy; save into a new "
                         "folder, or pass link_frozen=False to write copies")
    os.symlink(str(target), str(path), target_is_directory=True)


def save_with_links(pipe: Any, save: Callable[..., Any], save_directory: str | os.PathLike, link_frozen: bool = True,
                    **kwargs: Any) -> Any:
    """diffusers' `save_pretrained` (`save`), with each component of `pipe.component_sources`
    written as a link (module docstring) when `link_frozen`."""
    sources = dict(getattr(pipe, "component_sources", None) or {}) if link_frozen else {}
    patched, links = [], {}
    for name, src in sources.items():
        comp = getattr(pipe, name, None)
        if comp is None or name not in LINKABLE:
            continue
        target = Path(src).resolve()
        if not (target / "config.json").is_file():
            raise MissingWeightsError(f"cannot link {name}: its source folder {target} has no config.json any more")

        def link(path, *_args, _target=target, **_kwargs):  # stands in for the component's save_pretrained
            _make_link(Path(path), _target)

        comp.save_pretrained = link  # instance attribute: diffusers' save loop calls it for this component
        patched.append(comp)
        links[name] = {"target": str(target), **fingerprint(target)}
    try:
        out = save(save_directory, **kwargs)
    finally:
        for comp in patched:
            del comp.save_pretrained
    if links:
        from idcrafter.utils.io import atomic_write_json

        atomic_write_json(Path(save_directory) / LINKS_FILE, links, indent=1)
    return out


def relink_siblings(folder: str | Path, final: str | Path) -> list[str]:
    """Make the links of `folder` (to be renamed to `final`) that point into `final`'s parent
    folder relative (`vae -> ../sprites-vae`), so a shipped pipeline beside the VAE it uses
    (`assets/checkpoints/`) still resolves in a clone elsewhere; other links stay absolute.
    Returns the components rewritten."""
    folder, final = Path(folder), Path(final)
    path = folder / LINKS_FILE
    if not path.is_file():
        return []
    from idcrafter.utils.io import atomic_write_json

    links, base, done = json.loads(path.read_text(encoding="utf-8")), final.resolve().parent, []
    for name, entry in links.items():
        where = folder / name
        if not where.is_symlink():
            continue
        target = where.resolve()
        if base not in target.parents:
            continue
        rel = os.path.relpath(target, base / final.name)
        where.unlink()
        os.symlink(rel, str(where), target_is_directory=True)
        entry["target"], done = rel, [*done, name]
    if done:
        atomic_write_json(path, links, indent=1)
    return done


def check_links(folder: str | Path) -> dict[str, str]:
    """Verify the links of a saved pipeline folder (module docstring); returns {component: target}."""
    folder = Path(folder)
    path = folder / LINKS_FILE
    if not path.is_file():
        return {}
    try:
        links = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(links, dict)
    except (OSError, ValueError, AssertionError) as exc:
        raise CorruptFileError(f"{path} is not a JSON object of links: re-save the pipeline") from exc
    out = {}
    for name, entry in links.items():
        target = Path(str(entry.get("target", ""))) if isinstance(entry, dict) else Path("")
        where = folder / name
        fix = (f"put that folder back, or point the link at its new place: ln -sfn NEW_PATH {where}")
        if not where.is_symlink():
            if (where / "config.json").is_file():  # made self-contained (cp -rL): nothing to resolve
                continue
            raise MissingWeightsError(f"{where} should link to {target} but is missing: {fix}")
        resolved = where.resolve()
        if not (resolved / "config.json").is_file():
            raise MissingWeightsError(f"{where} links to {os.readlink(where)}, which holds no {name} "
                                      f"(no config.json): {fix}")
        if fingerprint(resolved) != {k: entry.get(k) for k in ("config_sha256", "weights")}:
            raise CorruptFileError(f"{where} links to {resolved}, whose config or weight files changed since the "
                                   f"pipeline was saved (another model?): link the folder it was built from")
        out[name] = str(resolved)
    return out
