"""OpenS2V-Eval v1.1: its benchmark JSON and its Total, computed as the published scripts do.

Total (`eval/merge_result.py` of OpenS2V-Nexus, v1.1): each metric is clipped per video, averaged
over the videos that have it, then min-max normalised and weighted.

| metric | per-video clip | normalisation | open | human |
|---|---|---|---|---|
| aesthetics (LAION, 1-10) | to [4, 7] | (avg - 4) / 3 | .16 | .18 |
| motion_smoothness | abs, <= 1 | avg | .06 | .09 |
| motion_amplitude | abs, <= 1 | avg | .02 | .03 |
| face_sim (FaceSim-Cur) | <= 1 | avg | .20 | .25 |
| gme | <= 1 | avg | .12 | .15 |
| nexus | videos scoring exactly 0 are left out; <= 0.05 | avg / 0.05 | .20 | - |
| natural (1-5, mean of 3 judge runs) | to [1, 5] | (avg - 1) / 4 | .24 | .30 |

Quirks kept: face_sim and gme are clipped from above only; nexus's zeros (no detection) are
dropped from its average, so a model that detects nothing on most videos is averaged over the
few it detects on; when every video of a computed metric is dropped, the published average
is 0, and so is it here.

Departure (documented, never silent): the published script counts a metric that was not
computed at all as an average of 0 (aesthetics then normalises to -1.33). Here a missing metric
is left out and the Total is renormalised over the included weights; the result says which
metrics it includes (`Total.includes`) and whether it is the full published Total
(`Total.complete`). Totals are fractions in [0, 1] as the script writes them (`Total.percent`
gives the leaderboard's percentage).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from idcrafter.errors import InputError

METRICS = ("aesthetics", "motion_smoothness", "motion_amplitude", "face_sim", "gme", "nexus", "natural")
RANGES = {"aesthetics": (4.0, 7.0), "motion_smoothness": (0.0, 1.0), "motion_amplitude": (0.0, 1.0),
          "face_sim": (0.0, 1.0), "gme": (0.0, 1.0), "nexus": (0.0, 0.05), "natural": (1.0, 5.0)}
WEIGHTS = {
    "open": {"aesthetics": 0.16, "motion_smoothness": 0.06, "motion_amplitude": 0.02, "face_sim": 0.20,
             "gme": 0.12, "nexus": 0.20, "natural": 0.24},
    "human": {"aesthetics": 0.18, "motion_smoothness": 0.09, "motion_amplitude": 0.03, "face_sim": 0.25,
              "gme": 0.15, "natural": 0.30},
}
#: key substrings of the cases FaceSim-Cur scores (the published script's filter)
FACE_CATEGORIES = ("singlehuman", "singleface", "faceobj", "humanobj")
HUMAN_PATH_MARKS = ("/man/", "/woman/", "/crop_woman/", "/crop_man/")
HUMAN_LABELS = ("Man", "Woman")


def clip_video_value(name: str, value: float) -> float | None:
    """One video's value clipped as published; None when the video is left out (nexus == 0)."""
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name} of a video is {v}: a metric value must be finite")
    lo, hi = RANGES[name]
    if name in ("aesthetics", "natural"):
        return max(min(v, hi), lo)
    if name in ("motion_smoothness", "motion_amplitude"):
        return min(abs(v), hi)
    if name == "nexus":
        return None if v == 0 else min(v, hi)
    return min(v, hi)  # face_sim, gme: from above only


def benchmark_average(name: str, values: Sequence[float]) -> float:
    """The published average of per-video values (clipped; 0 when every video is left out)."""
    kept = [c for c in (clip_video_value(name, v) for v in values) if c is not None]
    return sum(kept) / len(kept) if kept else 0.0


def normalise(name: str, average: float) -> float:
    lo, hi = RANGES[name]
    return (float(average) - lo) / (hi - lo)


class Total(float):
    """The Total as a float (a fraction, like the published script's `total_score`), carrying
    `domain`, `parts` (normalised metric -> value), `weights`, `includes`, `missing` (metric ->
    why) and `complete`."""

    domain: str
    parts: dict[str, float]
    weights: dict[str, float]
    includes: tuple[str, ...]
    missing: dict[str, str]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def percent(self) -> float:
        return 100.0 * float(self)

    def describe(self) -> str:
        what = "all metrics" if self.complete else "only " + ", ".join(self.includes) + \
            " (renormalised; missing: " + ", ".join(f"{k}: {v}" for k, v in self.missing.items()) + ")"
        return f"Total ({self.domain} domain) {self.percent:.2f}% over {what}"


def total_score(metrics: Mapping[str, float | Sequence[float] | None], domain: str = "open",
                reasons: Mapping[str, str] | None = None) -> Total:
    """OpenS2V-Eval v1.1 Total of `metrics`: name -> the raw benchmark average (aesthetics on
    its 1-10 scale, natural on 1-5, nexus raw), or a sequence of raw per-video values (clipped
    per video and averaged as published), or None / absent when not computed (`reasons` may
    say why). Names: `METRICS`. Raises InputError on an unknown name or domain."""
    if domain not in WEIGHTS:
        raise InputError(f"unknown OpenS2V domain {domain!r}: choose open or human")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise InputError(f"unknown OpenS2V metric(s) {unknown}: use {', '.join(METRICS)}")
    weights = WEIGHTS[domain]
    reasons = dict(reasons or {})
    parts: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name in weights:
        value = metrics.get(name)
        if value is None or (not isinstance(value, (int, float)) and len(value) == 0):
            missing[name] = reasons.get(name, "not computed" if value is None else "no video scored")
            continue
        if isinstance(value, (int, float)):
            if not math.isfinite(float(value)):
                raise InputError(f"the benchmark average of {name} is {value}: it must be finite")
            avg = float(value)
        else:
            avg = benchmark_average(name, list(value))
        parts[name] = normalise(name, avg)
    used = sum(weights[n] for n in parts)
    value = sum(weights[n] * parts[n] for n in parts) / used if used > 0 else float("nan")
    out = Total(value)
    out.domain, out.parts, out.weights = domain, parts, dict(weights)
    out.includes, out.missing = tuple(parts), missing
    return out


# ---------------------------------------------------------------------- the benchmark JSON
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
MAX_REFERENCES = 8


@dataclass(frozen=True)
class OpenS2VCase:
    key: str
    prompt: str
    img_paths: tuple[str, ...]
    class_labels: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return self.key.rsplit("_", 1)[0]

    @property
    def face_scored(self) -> bool:
        """Whether OpenS2V's FaceSim-Cur scores this case (its key names a face category)."""
        return any(c in self.key for c in FACE_CATEGORIES)

    def first_human_reference(self) -> int | None:
        """Index of the reference FaceSim-Cur compares with: the first path under man/ woman/."""
        for i, p in enumerate(self.img_paths):
            if any(m in p for m in HUMAN_PATH_MARKS):
                return i
        return None

    def human_references(self) -> list[int]:
        """References of people (labelled Man / Woman, or under a man/ woman/ folder)."""
        return [i for i, p in enumerate(self.img_paths)
                if (i < len(self.class_labels) and self.class_labels[i] in HUMAN_LABELS)
                or any(m in p for m in HUMAN_PATH_MARKS)]

    def nexus_labels(self) -> list[tuple[int, str]]:
        """(reference, detector label) pairs NexusScore uses: faces of people skipped in *face*
        cases, people labelled "human" in *human* cases (the published rules)."""
        out = []
        for i, label in enumerate(self.class_labels):
            if "face" in self.key and label in HUMAN_LABELS:
                continue
            out.append((i, "human" if "human" in self.key and label in HUMAN_LABELS else label))
        return out


def _fail(path: Path, where: str, what: str) -> InputError:
    return InputError(f"{path}: {where}: {what}. An OpenS2V-Eval benchmark file maps each case key to "
                      '{"img_paths": [...], "prompt": "...", "class_label": [...]}')


def parse_benchmark(data: Any, path: Path) -> list[OpenS2VCase]:
    """Validate decoded JSON `data` (read from `path`) into cases, in file order."""
    if not isinstance(data, dict) or not data:
        raise _fail(path, "top level", "expected a non-empty JSON object of cases")
    cases = []
    for key, value in data.items():
        if not isinstance(key, str) or not _KEY_RE.match(key) or ".." in key:
            raise _fail(path, f"case key {str(key)[:40]!r}", "keys must be 1-200 letters, digits, '_', '-' or '.' "
                        "(they name the video files <key>.mp4)")
        if not isinstance(value, dict):
            raise _fail(path, f"case {key!r}", "expected an object")
        paths, prompt, labels = value.get("img_paths"), value.get("prompt"), value.get("class_label", None)
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
            raise _fail(path, f"case {key!r}", "img_paths must be a non-empty list of image paths")
        if len(paths) > MAX_REFERENCES:
            raise _fail(path, f"case {key!r}", f"{len(paths)} reference images; at most {MAX_REFERENCES}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _fail(path, f"case {key!r}", "prompt must be a non-empty string")
        if labels is None:
            labels = []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise _fail(path, f"case {key!r}", "class_label must be a list of strings")
        if labels and len(labels) != len(paths):
            raise _fail(path, f"case {key!r}", f"{len(labels)} class labels for {len(paths)} images")
        extra = {k: v for k, v in value.items() if k not in ("img_paths", "prompt", "class_label")}
        cases.append(OpenS2VCase(key, prompt, tuple(paths), tuple(labels), extra))
    return cases


def load_benchmark(path: str | Path) -> list[OpenS2VCase]:
    """Read and validate an OpenS2V-Eval JSON file; InputError with the case and field at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"benchmark file not found: {path} (pass an OpenS2V-Eval JSON such as Open-Domain_Eval.json "
                         f"or a built-in benchmark name)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: pass an OpenS2V-Eval JSON file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise InputError(f"{path} nests too deeply to be an OpenS2V-Eval JSON file") from None
    return parse_benchmark(data, path)


def domain_of(path: str | Path) -> str:
    """"human" for the Human-Domain file (by its name, as the published runner is told), else "open"."""
    return "human" if "human-domain" in Path(path).name.lower() else "open"
