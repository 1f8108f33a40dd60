"""Run `idcrafter ARGS` and SIGKILL the process at one chosen write (fault injection, issue 10).

    python tests/fault_runner.py KIND MATCH N ARGS...

KIND
  replace-before  kill at the N-th os.replace(src, dst) whose dst contains MATCH, before it renames
  replace-after   the same, right after the rename
  aside-after     kill right after the N-th os.replace whose *src* ends with MATCH (a folder renamed aside)
  append-half     kill at the N-th append_line to a path containing MATCH, after writing half the line
The environment variable STUB_HELDOUT=1 replaces the held-out judge evaluation by
`reliability_helpers.stub_heldout` (exports then need no judge).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    kind, match, n, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    seen = [0]

    def hit(text: str) -> bool:
        if match in text:
            seen[0] += 1
            return seen[0] == n
        return False

    real_replace = os.replace
    if kind in ("replace-before", "replace-after", "aside-after"):
        def replace(src, dst, *a, **k):
            fire = hit(str(src)) if kind == "aside-after" and str(src).endswith(match) else \
                (hit(str(dst)) if kind != "aside-after" else False)
            if fire and kind == "replace-before":
                die()
            out = real_replace(src, dst, *a, **k)
            if fire:
                die()
            return out

        os.replace = replace
    elif kind == "append-half":
        import idcrafter.train.logger as logger
        import idcrafter.utils.io as uio

        real_append = uio.append_line

        def append_line(path, line):
            if hit(str(path)):
                with open(path, "a") as fh:  # half a line, flushed: what a kill mid-write leaves
                    fh.write(line[: len(line) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                die()
            real_append(path, line)

        uio.append_line = logger.append_line = append_line
    else:
        raise SystemExit(f"unknown fault {kind}")
    if os.environ.get("STUB_HELDOUT") == "1":
        import idcrafter.heldout
        from reliability_helpers import stub_heldout

        idcrafter.heldout.evaluate_heldout = stub_heldout
    sys.argv = ["idcrafter", *args]
    from idcrafter.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
