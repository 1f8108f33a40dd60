"""Reading a subject's nine attributes back, and scoring the read-out (the audit judge's figure).

The subject embedder's attribute heads give, per crop, log-probabilities over each attribute's
values; a track's read-out sums them over its frames. `attribute_accuracy` compares that
read-out with a reference's attributes. A prediction that renders the same reference as the
truth counts as right (`looks_the_same`: a bald head has no visible hair colour), because no
model can read an invisible attribute and no caption about it can be checked.

The reference's true attributes (`reference_truth`), in this order:
1. `given`: the caller knows them (a SpriteWorld case carries its identities'
   `Identity.attributes()`; the eval runner passes them) -- exact by definition;
2. `render`: the reference image is inverted through the renderer: starting from the heads'
   read-out, coordinate descent over the nine attributes picks, one attribute at a time, the
   value whose `render_reference` is closest to the image, and the result is kept only when it
   renders the image again (every pixel within `INVISIBLE_DIFF`). A clean reference at the
   judge's reference size (32 px: what `world sample` and the benchmarks write) is decoded
   exactly, whatever mistakes the heads make;
3. `read`: otherwise (another size, a photo, a JPEG) the heads' read-out of the reference,
   which is right on 99% of attributes of clean held-out references (`assets/judge/audit/subject.md`)
   but not exact.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from idcrafter.world.identity import ATTRIBUTES, Identity

ATTR_NAMES = [name for name, _ in ATTRIBUTES]
INVISIBLE_DIFF = 8  # max |pixel difference| (of 255) below which two references look the same
REF_SIZE = 32
NOT_A_RENDER = 12.0  # mean |pixel difference| beyond which no pair move is tried (a photo, not a render)


@lru_cache(maxsize=65536)
def looks_the_same(ident: Identity, attr: str, value: int) -> bool:
    """Whether `ident` with `attr` set to `value` renders the same reference image.

    Some attribute values are invisible by construction: a bald head has no hair colour, a hat
    hides a bun (short = bun), glasses cover the eyes (dot = sleepy). No model can read them, and
    no caption about them can be checked, so attribute accuracy counts such a prediction as right.
    """
    from idcrafter.world.scene import render_reference

    if getattr(ident, attr) == value:
        return True
    a = render_reference(ident, REF_SIZE).astype(np.int16)
    b = render_reference(ident.replace(**{attr: value}), REF_SIZE).astype(np.int16)
    return int(np.abs(a - b).max()) <= INVISIBLE_DIFF


def read_attributes(logprobs: dict[str, np.ndarray]) -> dict[str, int]:
    """The most probable value of each of the nine attributes."""
    return {a: int(np.argmax(logprobs[a])) for a in ATTR_NAMES}


def attribute_accuracy(track_logprobs: dict[str, np.ndarray], ref_logprobs: dict[str, np.ndarray],
                       known: dict[str, int] | Identity | None = None) -> float:
    """Fraction of the nine attributes read from a track that match the reference's.

    track_logprobs / ref_logprobs: {attribute: (n_values,) log-probabilities} (a track's summed
    over its frames); known: the reference's true attributes ({name: value} or an `Identity`),
    else they are read from `ref_logprobs`. Invisible differences count as right (module docstring).
    """
    truth = known.attributes() if isinstance(known, Identity) else (dict(known) if known else read_attributes(ref_logprobs))
    bad = [a for a, n in ATTRIBUTES if not (a in truth and 0 <= int(truth[a]) < n)]
    if bad:
        from idcrafter.errors import InputError

        raise InputError(f"reference attributes {', '.join(bad)} missing or out of range: give all nine "
                         f"({', '.join(f'{a} 0..{n - 1}' for a, n in ATTRIBUTES)})")
    ident = Identity(**{a: int(truth[a]) for a in ATTR_NAMES})
    pred = read_attributes(track_logprobs)
    return float(np.mean([looks_the_same(ident, a, pred[a]) for a in ATTR_NAMES]))


def _render_distance(ident: Identity, image: np.ndarray) -> tuple[float, int]:
    """(mean, max) |pixel difference| between `image` (S, S, 3) and `ident`'s reference at S px."""
    from idcrafter.world.scene import render_reference

    d = np.abs(render_reference(ident, image.shape[0]).astype(np.int16) - image.astype(np.int16))
    return float(d.mean()), int(d.max())


def decode_reference(image: np.ndarray, start: dict[str, int] | None = None, rounds: int = 3) -> dict[str, int] | None:
    """The attributes whose clean reference render is `image` (S, S, 3) uint8, or None.

    Coordinate descent on the mean pixel difference to `image`, from `start` (default all
    zeros): single-attribute moves until none helps, then, if the render is still not exact,
    one sweep of joint moves over every pair of attributes (some only show together: hair of a
    colour needs a style that is not bald); up to `rounds` such rounds. The answer is returned
    only if its render matches every pixel within `INVISIBLE_DIFF`; an attribute that does not
    show (a bald head's hair colour) keeps whatever value it had.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.shape[0] < 8:
        return None
    ident = Identity(**{a: int(start[a]) if start and a in start else 0 for a in ATTR_NAMES})
    best, worst = _render_distance(ident, image)

    def try_moves(moves) -> bool:
        nonlocal ident, best, worst
        changed = False
        for change in moves:
            cand = ident.replace(**change)
            if cand == ident:
                continue
            mean, mx = _render_distance(cand, image)
            if mean < best - 1e-9:
                ident, best, worst, changed = cand, mean, mx, True
        return changed

    singles = [{a: v} for a, n in ATTRIBUTES for v in range(n)]
    pairs = [{a: v, b: w} for i, (a, n) in enumerate(ATTRIBUTES) for b, m in ATTRIBUTES[i + 1:]
             for v in range(n) for w in range(m)]
    for _ in range(rounds):
        while worst > INVISIBLE_DIFF and try_moves(singles):
            pass
        if worst <= INVISIBLE_DIFF or best > NOT_A_RENDER or not try_moves(pairs):
            break
    return ident.attributes() if worst <= INVISIBLE_DIFF else None


def reference_truth(known: dict[str, int] | Identity | None, image: np.ndarray | None,
                    ref_logprobs: dict[str, np.ndarray]) -> tuple[dict[str, int], str]:
    """A reference's true attributes and where they came from: `given`, `render` or `read`
    (module docstring). `image`: the reference as the judge prepared it (S, S, 3) uint8."""
    if known is not None:
        return (known.attributes() if isinstance(known, Identity) else dict(known)), "given"
    read = read_attributes(ref_logprobs)
    decoded = decode_reference(image, read) if image is not None else None
    return (decoded, "render") if decoded is not None else (read, "read")


def wrong_attributes(track_logprobs: dict[str, np.ndarray], truth: dict[str, int]) -> list[str]:
    """The attributes a track's read-out gets visibly wrong against `truth` (interpretable detail
    beside `attribute_accuracy`, which is 1 - len(wrong) / 9)."""
    ident = Identity(**{a: int(truth[a]) for a in ATTR_NAMES})
    pred = read_attributes(track_logprobs)
    return [a for a in ATTR_NAMES if not looks_the_same(ident, a, pred[a])]
