"""Captions that name subjects by appearance, and the parser that reads them back.

Grammar (what `make_caption` writes and `parse_caption` reads):

    <Scene>: <clause>; <clause>; ... .
    clause  := <subject> <solo action>  |  <subject> and <subject> <pair action>
    subject := the person with <part>, <part> and <part>

Clauses come in an order unrelated to the order of the references, so a model (and the
judge) must bind each phrase to a reference by appearance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from idcrafter.errors import InputError
from idcrafter.world.identity import (
    ACCESSORIES, CLOTH_COLOURS, EYES, HAIR_COLOURS, HAIR_STYLES, HEAD_SHAPES, PANTS_COLOURS,
    PATTERNS, SKINS, Identity,
)
from idcrafter.world.scene import ClipSpec

SCENES = {
    "grass": "On a grassy field", "beach": "On a beach", "street": "On a street at night",
    "room": "In a room", "snow": "In the snow", "forest": "In a forest",
}
SOLO_PHRASES = {
    "stay": "stands still", "walk_left": "walks to the left", "walk_right": "walks to the right",
    "jump": "jumps", "wave": "waves",
}
PAIR_PHRASES = {"approach": "walk toward each other", "swap": "swap places"}
HAIR_TEMPLATES = {"short": "short {c} hair", "long": "long {c} hair", "spiky": "spiky {c} hair",
                  "bun": "{c} hair in a bun"}
PATTERN_WORDS = {"plain": "", "striped": "striped ", "two-tone": "two-tone "}


def _a(phrase: str) -> str:
    """Indefinite article: 'an orange shirt', 'a red shirt'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _names(palette) -> list[str]:
    return [name for name, _ in palette]


def describe_parts(ident: Identity) -> dict[str, str]:
    """Every phrase that can describe `ident`, keyed by the attribute it names."""
    style = HAIR_STYLES[ident.hair_style]
    hair_c = HAIR_COLOURS[ident.hair_colour][0]
    parts = {
        "hair": "a bald head" if style == "bald" else HAIR_TEMPLATES[style].format(c=hair_c),
        "shirt": _a(f"{PATTERN_WORDS[PATTERNS[ident.pattern]]}{CLOTH_COLOURS[ident.shirt][0]} shirt"),
        "pants": f"{PANTS_COLOURS[ident.pants][0]} pants",
        "skin": f"{SKINS[ident.skin][0]} skin",
        "head": _a(f"{HEAD_SHAPES[ident.head]} head"),
        "eyes": f"{EYES[ident.eyes]} eyes",
    }
    acc = ACCESSORIES[ident.accessory]
    if acc != "none":
        parts["accessory"] = {"hat": "a hat", "glasses": "glasses", "bow": "a bow"}[acc]
    return parts


def subject_phrase(ident: Identity, rng: np.random.Generator) -> str:
    """'the person with ...': always hair and shirt (shirts differ within a cast), plus extras."""
    parts = describe_parts(ident)
    chosen = [parts["hair"]]
    if "accessory" in parts and rng.random() < 0.6:
        chosen.append(parts["accessory"])
    for extra in ("skin", "pants", "eyes", "head"):
        if rng.random() < 0.15:
            chosen.append(parts[extra])
    chosen.append(parts["shirt"])
    body = chosen[0] if len(chosen) == 1 else ", ".join(chosen[:-1]) + " and " + chosen[-1]
    return "the person with " + body


def make_caption(spec: ClipSpec, rng: np.random.Generator) -> str:
    """Caption of a clip: scene, then one clause per subject (or pair) in a random order."""
    clauses: list[str] = []
    pair = spec.interaction
    for i in rng.permutation(len(spec.subjects)):
        i = int(i)
        if pair and i == pair[1]:
            continue
        s = spec.subjects[i]
        if pair and i == pair[0]:
            other = spec.subjects[pair[1]]
            a, b = subject_phrase(s.identity, rng), subject_phrase(other.identity, rng)
            if rng.random() < 0.5:
                a, b = b, a
            clauses.append(f"{a} and {b} {PAIR_PHRASES[s.action]}")
        else:
            clauses.append(f"{subject_phrase(s.identity, rng)} {SOLO_PHRASES[s.action]}")
    return f"{SCENES[spec.background]}: " + "; ".join(clauses) + "."


# ----------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class SubjectMention:
    """A subject named in a caption: the attribute values it states and its action."""

    attributes: dict[str, int]
    action: str
    text: str


def _vocab() -> list[tuple[re.Pattern, dict[str, int]]]:
    """(regex, attributes it implies) pairs, longest phrases first."""
    rules: list[tuple[str, dict[str, int]]] = [("a bald head", {"hair_style": HAIR_STYLES.index("bald")})]
    for ci, c in enumerate(_names(HAIR_COLOURS)):
        for style, tpl in HAIR_TEMPLATES.items():
            rules.append((tpl.format(c=c), {"hair_style": HAIR_STYLES.index(style), "hair_colour": ci}))
    for pi, p in enumerate(PATTERNS):
        for ci, c in enumerate(_names(CLOTH_COLOURS)):
            rules.append((_a(f"{PATTERN_WORDS[p]}{c} shirt"), {"shirt": ci, "pattern": pi}))
    rules += [(f"{c} pants", {"pants": i}) for i, c in enumerate(_names(PANTS_COLOURS))]
    rules += [(f"{c} skin", {"skin": i}) for i, c in enumerate(_names(SKINS))]
    rules += [(_a(f"{h} head"), {"head": i}) for i, h in enumerate(HEAD_SHAPES)]
    rules += [(f"{e} eyes", {"eyes": i}) for i, e in enumerate(EYES)]
    rules += [("a hat", {"accessory": 1}), ("glasses", {"accessory": 2}), ("a bow", {"accessory": 3})]
    rules.sort(key=lambda r: -len(r[0]))
    return [(re.compile(r"\b" + re.escape(text) + r"\b"), attrs) for text, attrs in rules]


_VOCAB = None


def _parse_subject(text: str) -> dict[str, int]:
    global _VOCAB
    if _VOCAB is None:
        _VOCAB = _vocab()
    attrs: dict[str, int] = {}
    rest = text
    for pattern, implied in _VOCAB:
        if pattern.search(rest):
            attrs.update(implied)
            rest = pattern.sub(" ", rest)
    if not attrs:
        raise InputError(f"cannot tell who {text!r} is: name the subject's hair, shirt or accessory")
    return attrs


def parse_caption(caption: str) -> list[SubjectMention]:
    """Subjects named in a caption, in caption order. Raises InputError if none can be read."""
    body = caption.strip().rstrip(".")
    if ":" in body:
        body = body.split(":", 1)[1]
    mentions: list[SubjectMention] = []
    pair_re = "|".join(re.escape(p) for p in PAIR_PHRASES.values())
    solo_re = "|".join(re.escape(p) for p in SOLO_PHRASES.values())
    for clause in filter(None, (c.strip() for c in body.split(";"))):
        m = re.fullmatch(rf"(the person with .+?) and (the person with .+) ({pair_re})", clause)
        if m:
            action = next(k for k, v in PAIR_PHRASES.items() if v == m.group(3))
            mentions += [SubjectMention(_parse_subject(m.group(i)), action, m.group(i)) for i in (1, 2)]
            continue
        m = re.fullmatch(rf"(the person with .+) ({solo_re})", clause)
        if not m:
            raise InputError(
                f"cannot parse the clause {clause!r}: write 'the person with <hair/shirt/...> <action>' "
                f"with an action among: {', '.join(list(SOLO_PHRASES.values()) + list(PAIR_PHRASES.values()))}")
        action = next(k for k, v in SOLO_PHRASES.items() if v == m.group(2))
        mentions.append(SubjectMention(_parse_subject(m.group(1)), action, m.group(1)))
    if not mentions:
        raise InputError("the prompt names no subject: describe each as 'the person with ...'")
    return mentions


def parse_background(caption: str) -> str | None:
    head = caption.split(":", 1)[0].strip()
    for key, text in SCENES.items():
        if head == text:
            return key
    return None


def match_mentions(mentions: list[SubjectMention], ref_attr_logprobs: list[dict[str, np.ndarray]]) -> list[int]:
    """Reference index of each mention: Hungarian matching on attribute log-likelihoods.

    ref_attr_logprobs[r][attr] is a (num_values,) log-probability vector predicted for reference r.
    """
    from scipy.optimize import linear_sum_assignment

    if len(mentions) != len(ref_attr_logprobs):
        raise InputError(
            f"the prompt names {len(mentions)} subject(s) but {len(ref_attr_logprobs)} reference(s) were "
            f"given: pass one --ref per subject named in the prompt")
    cost = np.zeros((len(mentions), len(ref_attr_logprobs)))
    for i, m in enumerate(mentions):
        for r, lp in enumerate(ref_attr_logprobs):
            cost[i, r] = -sum(float(lp[a][v]) for a, v in m.attributes.items())
    rows, cols = linear_sum_assignment(cost)
    out = [0] * len(mentions)
    for i, r in zip(rows, cols):
        out[i] = int(r)
    return out


def one_hot_logprobs(ident: Identity, eps: float = 1e-3) -> dict[str, np.ndarray]:
    """Ground-truth 'predictions' for a known identity (used in tests and for oracle matching)."""
    from idcrafter.world.identity import ATTRIBUTES

    out = {}
    for name, n in ATTRIBUTES:
        p = np.full(n, eps)
        p[getattr(ident, name)] = 1.0
        out[name] = np.log(p / p.sum())
    return out
