"""The README / docs screenshot of the page: `docs/serving.png`.

Serves the shipped model on a loopback port in this process, drives Debian's Chromium with
Playwright: uploads a held-out cast's references, types its caption, generates with `--steps`
steps, waits for the result and saves the viewport as a small palette PNG.

    .venv/bin/python scripts/serve_screenshot.py [--steps 20] [--out docs/serving.png]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from idcrafter.serve.limits import ServeLimits
    from idcrafter.serve.server import HEADLESS_CHROMIUM_ARGS, ServerThread, build
    from idcrafter.utils.io import atomic_write_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--example", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serving.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    models = args.model or [str(ROOT / "assets" / "checkpoints" / "sprites-sft")]
    app, _ = build(models, ["cpu"], "float32", ServeLimits(), examples=4)
    with ServerThread(app) as url, tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        ex = requests.get(f"{url}/api/examples", timeout=30).json()["examples"][args.example]
        refs = []
        for k, src in enumerate(ex["refs"]):
            refs.append(Path(tmp) / f"subject_{k}.png")
            refs[-1].write_bytes(requests.get(url + src, timeout=30).content)
        browser = pw.chromium.launch(executable_path=args.chromium, args=list(HEADLESS_CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.set_input_files("#ref-input", [str(p) for p in refs])
        page.fill("#prompt", ex["caption"])
        page.fill("#set-steps", str(args.steps))
        page.click("#generate")
        page.wait_for_function("() => [...document.querySelectorAll('#results .panel')]"
                               ".every(p => p.dataset.status === 'done')", timeout=300_000)
        page.wait_for_timeout(500)  # the video's first frame and the sheet paint
        png = page.screenshot()
        browser.close()
    small = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(small, format="PNG", optimize=True)
    atomic_write_bytes(args.out, small.getvalue())
    print(f"wrote {args.out} ({len(small.getvalue()) // 1024} kB)")


if __name__ == "__main__":
    main()
