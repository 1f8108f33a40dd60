"""Reading a subject's nine attributes back, and scoring the read-out (the audit judge's figure).

The subject embedder's attribute heads give, per crop, log-probabilities over each attribute's
values; a track's read-out sums them over its frames. `attribute_accuracy` compares that
read-out with a reference's attributes: its true ones when known (SpriteWorld identities), else
the same heads' read-out of the reference image. A prediction that renders the same reference
as the truth counts as right (`looks_the_same`: a bald head has no visible hair colour), because
no model can read an invisible attribute and no caption about it can be checked.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from idcrafter.world.identity import ATTRIBUTES, Identity

ATTR_NAMES = [name for name, _ in ATTRIBUTES]
INVISIBLE_DIFF = 8  # max |pixel difference| (of 255) below which two references look the same
REF_SIZE = 32


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
