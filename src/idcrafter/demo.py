"""`make demo`: the main job on the embedded default.

Today it renders a SpriteWorld clip of held-out subjects, judges it against its references and
caption, and writes the clip, a contact sheet and the judge's metrics. (Once a generator is
shipped, the demo generates the clip instead and shows ground truth beside it.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from idcrafter.judge.judge import Judge
from idcrafter.utils.media import contact_sheet, save_image, write_mp4
from idcrafter.world.dataset import make_example


def run_demo(out: Path, seed: int = 7, subjects: int = 3) -> dict:
    """Render, judge and write `out/{clip.mp4, sheet.png, metrics.json, report.md, ref_*.png}`."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ex = make_example(seed, 0, "heldout", num_subjects=subjects)
    for i, r in enumerate(ex.refs):
        save_image(out / f"ref_{i}.png", r)
    write_mp4(out / "clip.mp4", ex.clip.frames)
    save_image(out / "sheet.png", contact_sheet([("references", list(ex.refs)), ("clip", list(ex.clip.frames))]))
    report = Judge.load().score(ex.clip.frames, list(ex.refs), ex.caption)
    result = {"caption": ex.caption, **report.as_dict()}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    lines = [f"# idcrafter demo (seed {seed})", "", f"Caption: {ex.caption}", "",
             "Clip: `clip.mp4` (a SpriteWorld render of held-out identities); sheet: `sheet.png`.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report.metrics.items()]
    lines += ["", "| subject | matched track | face_sim | leakage | action (seen / asked) |", "|---|---|---|---|---|"]
    lines += [f"| ref_{s['reference']} | {s['track']} | {s['face_sim']:.3f} | {s['leakage']:.3f} | "
              f"{s['action']} / {s['wanted_action']} |" for s in report.per_subject]
    lines += ["", f"Wall time: {time.time() - t0:.1f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/clip.mp4, sheet.png, metrics.json, report.md")
    return result
