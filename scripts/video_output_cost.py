"""What writing a real-size clip costs: the mp4 and the contact sheet of an 81 x 480 x 832 clip.

    .venv/bin/python scripts/video_output_cost.py [--frames 81 --height 480 --width 832]

In a fresh process (a thread sampling the resident set every 2 ms, above the process after its
imports and after the clip is in memory): `write_mp4` at the clip's size (H.264 yuv420p) and
`contact_sheet` of references | generated | ground truth (8 sampled frames a row, 192 px), of a
smooth pattern moving 4 px a frame (random noise would time H.264's worst case, not a video). The
issue that replaced the old writer measured 62 s and 13.2 GB for the old sheet alone (every
frame nearest-upscaled 4x) at this size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CODE = r"""
import json, tempfile, threading, time, psutil
import numpy as np
from idcrafter.utils.media import contact_sheet, save_image, write_mp4
rng = np.random.default_rng(0)
f, h, w = (F, H, W, 3)[:3]  # a smooth pattern moving 4 px a frame (noise is no video: H.264's worst case)
yy, xx = np.mgrid[0:h, 0:w]
clip = np.stack([np.stack([(xx + 4 * t) % 256, yy % 256, ((xx + yy) // 2 + 2 * t) % 256], -1)
                 for t in range(f)]).astype(np.uint8)
refs = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(2)]
proc = psutil.Process(); start = proc.memory_info().rss; peak = [start]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
out = {}
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter(); write_mp4(d + "/clip.mp4", clip, fps=16); out["mp4_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sheet = contact_sheet([("references", refs), ("generated", list(clip)), ("ground truth", list(clip))])
    save_image(d + "/sheet.png", sheet); out["sheet_s"] = time.perf_counter() - t0
    out["sheet_shape"] = list(sheet.shape)
done.set(); time.sleep(0.01)
out["peak_above_clip_gb"] = (peak[0] - start) / 1e9
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    a = ap.parse_args()
    code = CODE.replace("(F, H, W, 3)", f"({a.frames}, {a.height}, {a.width}, 3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    print(json.dumps(json.loads(res.stdout.strip().splitlines()[-1]), indent=2))


if __name__ == "__main__":
    main()
