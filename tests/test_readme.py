"""The README's Python examples run as written (on the embedded demo model), so they cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    outputs = (
        "circle.mp4",
        "half.safetensors",
        "finished.gif",
        "half.mp4",
        "v2v.gif",
        "inpainted.gif",
        "fast.gif",
        "edges.gif",
        "styled.gif",
    )
    for name in outputs:
        assert (tmp_path / name).stat().st_size > 0, name
    assert namespace["out"].frames[0].shape == (8, 64, 64, 3)
    assert tuple(namespace["latents"].shape) == (1, 4, 8, 16, 16)
