"""COCO run-length masks (the format of OpenS2V-5M's `mask_annotation`), without pycocotools.

A mask of size (h, w) is flattened in column-major order and stored as alternating run lengths
of 0s and 1s (starting with 0s). The compressed string form (what `pycocotools.mask.encode`
writes and OpenS2V stores as `counts`) codes each run in 5-bit groups, 48 + value per
character, bit 0x20 = more groups follow, bit 0x10 of the last group = negative; from the third
run on, the value stored is the difference to the run two places back.
"""

from __future__ import annotations

import numpy as np


def string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: list[int]) -> str:
    out = []
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def decode(rle: dict) -> np.ndarray:
    """{"size": [h, w], "counts": str | list[int]} -> (h, w) bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, bytearray)):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = string_to_counts(counts)
    if sum(counts) != h * w:
        raise ValueError(f"RLE runs cover {sum(counts)} pixels, the mask has {h * w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def encode(mask: np.ndarray) -> dict:
    """(h, w) bool mask -> {"size": [h, w], "counts": compressed str}."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [h, w], "counts": counts_to_string(runs)}
