"""A saved folder loads with trust_remote_code=True where mematte_hf cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from tests.utils import random_inputs, tiny_model

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["mematte_hf"] = None  # any `import mematte_hf` now fails: the folder's own code must suffice
    import torch
    from transformers import AutoModelForImageMatting
    model = AutoModelForImageMatting.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert "mematte_hf" not in type(model).__module__, type(model).__module__
    pixel_values = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(pixel_values).alphas, sys.argv[3])
    print(type(model).__name__)
    """
)


def test_trust_remote_code_load_without_mematte_hf(tmp_path):
    model = tiny_model(seed=12)
    model.save_pretrained(tmp_path / "model")
    auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageMatting"] == "modeling_mematte.MEMatteForImageMatting"
    pixel_values = random_inputs(1, 64, 96)
    torch.save(pixel_values, tmp_path / "inputs.pt")
    environment = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "model"), str(tmp_path / "inputs.pt"), str(tmp_path / "a.pt")],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,  # not the repository: the package must not be importable from the working directory
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("MEMatteForImageMatting")
    with torch.no_grad():
        expected = model(pixel_values).alphas
    torch.testing.assert_close(torch.load(tmp_path / "a.pt"), expected)
