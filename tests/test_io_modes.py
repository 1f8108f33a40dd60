"""Atomic writes keep the mode an ordinary write would give (mkstemp alone makes 0600)."""

import os

from idcrafter.utils.io import atomic_write_text


def test_atomic_write_uses_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        plain = tmp_path / "b.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert path.read_text() == "x"
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777 == 0o644


def test_temp_dir_beside_gets_the_umask_mode(tmp_path):
    from idcrafter.utils.io import temp_dir_beside

    old = os.umask(0o022)
    try:
        d = temp_dir_beside(tmp_path / "out")
    finally:
        os.umask(old)
    assert os.stat(d).st_mode & 0o777 == 0o755 and d.name.startswith(".out.")
