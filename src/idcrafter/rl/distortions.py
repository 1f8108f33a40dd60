"""Synthetic identity distortions of SpriteWorld clips, the preference pairs they make, and the
pair file format (Identity-GRPO's synthetic data, in the embedded world).

Kinds (`KINDS`), each drawn from a range so a reward model learns the class, not one instance:
- `swap`: identities exchanged between two (or three) subjects, same actions and places
  (`judge.attacks.swap_permutation`); needs 2+ subjects (one subject: falls back to `blend`);
- `blend`: one subject rendered with a mix of its identity and another's (another subject of the
  cast, or an unseen identity): 2-5 of its 9 attributes taken from the other;
- `drift`: one subject's identity changes part-way through the clip: frames from a random cut
  (30-70% of the clip) on are rendered with 1-3 face attributes changed;
- `copy_paste`: the references pasted still into the scene (at their own scale or the subjects',
  `judge.attacks.paste_ref` / `paste_clip`).
A distorted clip is always rendered beside a fresh render of the true clip from the same seed
(same background texture), so the pair differs by the distortion only.

Pairs (`synthetic_pairs`): (true, distorted) with label "a" or "b" (which is better; the order is
random), and ties: the true clip against itself rendered under another light and seed (the same
identities doing the same thing), label "tie".

Pair file (JSONL, one pair per line; paths relative to the file's folder, like the SFT manifest):

    {"a": "clips/p0_a.mp4", "b": "clips/p0_b.mp4", "references": ["refs/p0_0.png", "refs/p0_1.png"],
     "prompt": "On a beach: ...", "label": "a" | "b" | "tie", "kind": "swap", "group": "heldout/17"}

`kind`, `group` and `size` are optional (`group`: the cast the pair is about, a held-out
evaluation keeps groups disjoint; `size`: [height, width] the clips are resized to when read). `write_pairs` / `read_pairs` write and read such files (mp4 + png).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from idcrafter.errors import InputError

KINDS = ("swap", "blend", "drift", "copy_paste")
LABELS = {"a": 1, "b": -1, "tie": 0}


@dataclass
class Pair:
    """Two clips (T, H, W, 3) uint8 of one case, its references and prompt, and the preference."""

    a: np.ndarray
    b: np.ndarray
    references: list[np.ndarray]
    prompt: str
    label: str  # "a", "b" or "tie"
    kind: str = ""
    group: str = ""

    @property
    def target(self) -> int:
        return LABELS[self.label]


def _render(spec, seed: int) -> np.ndarray:
    from idcrafter.world.scene import render_clip

    return render_clip(spec, np.random.default_rng(seed)).frames


def _with_identities(spec, identities: Sequence) -> object:
    return replace(spec, subjects=[replace(s, identity=i) for s, i in zip(spec.subjects, identities)])


def _mixed(a, b, names: Sequence[str]):
    return a.replace(**{n: getattr(b, n) for n in names})


def _other_identity(ex, rng: np.random.Generator, k: int):
    """Another identity for subject k: a cast-mate half the time (when there is one), else unseen."""
    from idcrafter.world.identity import sample_identities

    subjects = ex.spec.subjects
    if len(subjects) > 1 and rng.random() < 0.5:
        j = int(rng.choice([i for i in range(len(subjects)) if i != k]))
        return subjects[j].identity
    own = {s.identity.face_id for s in subjects}
    while True:
        (cand,) = sample_identities(rng, 1, "heldout")
        if cand.face_id not in own:
            return cand


def distort(ex, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(true clip, distorted clip) of example `ex` (module docstring), both freshly rendered."""
    from idcrafter.judge import attacks
    from idcrafter.world.identity import ATTRIBUTES, FACE_ATTRIBUTES

    if kind not in KINDS:
        raise InputError(f"unknown distortion {kind!r}; choose one of {', '.join(KINDS)}")
    spec, seed = ex.spec, int(rng.integers(1 << 30))
    true = _render(spec, seed)
    ids = [s.identity for s in spec.subjects]
    if kind == "swap" and len(ids) < 2:
        kind = "blend"
    if kind == "swap":
        perm = attacks.swap_permutation(ex, rng)
        return true, _render(_with_identities(spec, [ids[p] for p in perm]), seed)
    k = int(rng.integers(len(ids)))
    if kind in ("blend", "drift"):
        names = [n for n, _ in ATTRIBUTES] if kind == "blend" else list(FACE_ATTRIBUTES)
        low, high = (2, 6) if kind == "blend" else (1, 4)
        ids2 = list(ids)
        for _ in range(20):  # until the mix really differs (the other may share those attributes)
            take = [str(n) for n in rng.choice(names, size=int(rng.integers(low, high)), replace=False)]
            ids2[k] = _mixed(ids[k], _other_identity(ex, rng, k), take)
            if ids2[k] != ids[k]:
                break
        changed = _render(_with_identities(spec, ids2), seed)
        if kind == "blend":
            return true, changed
        drifted = changed
        t = len(true)
        cut = int(round(rng.uniform(0.3, 0.7) * (t - 1))) + 1
        out = true.copy()
        out[cut:] = drifted[cut:]
        return true, out
    ex_true = replace(ex, clip=replace(ex.clip, frames=true))
    paste = attacks.paste_clip if rng.random() < 0.5 else attacks.paste_ref
    return true, paste(ex_true, rng)


def tie_pair(ex, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two renders of the same cast doing the same thing under different light and texture."""
    spec = ex.spec
    light = tuple(float(v) * float(rng.uniform(0.9, 1.1)) for v in spec.light)
    return _render(spec, int(rng.integers(1 << 30))), _render(replace(spec, light=light), int(rng.integers(1 << 30)))


def synthetic_pairs(n: int, seed: int, split: str, kinds: Sequence[str] = KINDS, tie_fraction: float = 0.15,
                    frames: int = 5, size: int = 48, ref_size: int = 32, start: int = 0) -> list[Pair]:
    """`n` pairs from examples `start .. start + n - 1` of (split, seed) (module docstring)."""
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    if not kinds:
        raise InputError("no distortion kinds given")
    world = WorldConfig(frames=frames, height=size, width=size, ref_size=ref_size)
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i, 31])
        ex = make_example(seed, i, split, world)  # type: ignore[arg-type]
        refs, group = list(ex.refs), f"{split}/{seed}/{i}"
        if rng.random() < tie_fraction:
            a, b = tie_pair(ex, rng)
            out.append(Pair(a, b, refs, ex.caption, "tie", "tie", group))
            continue
        kind = str(kinds[int(rng.integers(len(kinds)))])
        true, bad = distort(ex, kind, rng)
        if rng.random() < 0.5:
            out.append(Pair(true, bad, refs, ex.caption, "a", kind, group))
        else:
            out.append(Pair(bad, true, refs, ex.caption, "b", kind, group))
    return out


# ------------------------------------------------------------------ the pair file
def write_pairs(pairs: Sequence[Pair], path: str | Path, fps: int = 4) -> Path:
    """Write pairs as a JSONL pair file with mp4 clips and png references beside it."""
    from idcrafter.utils.io import atomic_write_text, ensure_dir
    from idcrafter.utils.media import save_image, write_mp4

    path = Path(path)
    root = path.parent
    ensure_dir(root / "clips")
    ensure_dir(root / "refs")
    lines = []
    for i, p in enumerate(pairs):
        write_mp4(root / "clips" / f"p{i}_a.mp4", p.a, fps=fps, upscale=1)
        write_mp4(root / "clips" / f"p{i}_b.mp4", p.b, fps=fps, upscale=1)
        refs = []
        for k, r in enumerate(p.references):
            save_image(root / "refs" / f"p{i}_{k}.png", r)
            refs.append(f"refs/p{i}_{k}.png")
        lines.append(json.dumps({"a": f"clips/p{i}_a.mp4", "b": f"clips/p{i}_b.mp4", "references": refs,
                                 "prompt": p.prompt, "label": p.label, "kind": p.kind, "group": p.group,
                                 "size": list(p.a.shape[1:3])}))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_pairs(path: str | Path, ref_size: int = 32) -> list[Pair]:
    """Read a pair file (module docstring); a bad line is refused with its line number."""
    from idcrafter.encoders.references import prepare_reference
    from idcrafter.train.data import manifest_path
    from idcrafter.utils.media import read_video

    path = Path(path)
    if not path.is_file():
        raise InputError(f"pair file not found: {path} (JSONL: a, b, references, prompt, label per line)")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
            a, b, refs, prompt, label = item["a"], item["b"], item["references"], item["prompt"], item["label"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{where}: each line must be a JSON object with a, b, references, prompt, label "
                             f"({exc})") from exc
        if label not in LABELS or not isinstance(refs, list) or not refs or not isinstance(prompt, str):
            raise InputError(f"{where}: label must be a, b or tie, references a non-empty list, prompt a string")
        size = item.get("size")
        if size is not None and not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise InputError(f"{where}: size must be [height, width] in pixels")
        clips = [read_video(manifest_path(v, path.parent, False, where), None if size is None else tuple(size))
                 for v in (a, b)]
        images = [prepare_reference(manifest_path(r, path.parent, False, where), ref_size) for r in refs]
        out.append(Pair(clips[0], clips[1], images, prompt, label, str(item.get("kind", "")),
                        str(item.get("group", ""))))
    if not out:
        raise InputError(f"pair file {path} has no pairs")
    return out
