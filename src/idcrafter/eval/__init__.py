"""Evaluation users trust: `idcrafter eval` (a resumable runner over built-in and OpenS2V-Eval
benchmarks), OpenS2V-Eval v1.1's metrics and Total exactly as published (`metrics`, `opens2v`),
per-subject identity / leakage / copy-paste beyond them (`suite`), reports and `compare`.

Modules import their heavy dependencies lazily: importing `idcrafter.eval` is cheap.
"""
