"""The judge's training loop: a killed training resumes to the weights of an uninterrupted one."""

import numpy as np
import torch
from torch import nn

from idcrafter.judge.train.common import Resume, optimise


def _run(steps: int, resume: Resume | None, stop_after: int | None = None) -> dict:
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    rng = np.random.default_rng(0)
    calls = []

    def loss_at(step: int):
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt  # the process is killed here
        calls.append(step)
        x = torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32))
        return ((net(x)[:, 0] - x.sum(1)) ** 2).mean(), {}

    try:
        optimise({"net": net}, loss_at, steps, 0.05, rng, resume, progress=False)
    except KeyboardInterrupt:
        pass
    return {"weights": net.weight.detach().clone(), "calls": calls}


def test_a_killed_training_resumes_exactly(tmp_path):
    straight = _run(10, None)
    first = _run(10, Resume(tmp_path, "toy", every=4), stop_after=6)  # checkpoint at step 4, killed at 6
    assert (tmp_path / "toy.resume.pt").is_file() and first["calls"] == list(range(6))
    second = _run(10, Resume(tmp_path, "toy", every=4))
    assert second["calls"] == list(range(4, 10))  # steps 4 and 5 are redone from the checkpoint
    assert torch.allclose(second["weights"], straight["weights"], atol=1e-6)
    Resume(tmp_path, "toy").clear()
    assert not (tmp_path / "toy.resume.pt").exists()
