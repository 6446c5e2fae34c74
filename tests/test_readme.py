"""The README's promises, run as written: its "Python API" block (the API is the library the commands use)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_api_block() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds exactly one python block"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """Supernet, LUT, predict, slim to two targets, build, train and export: each output must exist and be
    consistent with the others, not merely not crash."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_api_block(), "README.md:Python API", "exec"), scope)
    found, lut, full_ms, metrics, report = (scope[k] for k in ("found", "lut", "full_ms", "metrics", "report"))
    assert len(found.rows) == 2 and full_ms > 0
    for row in found.rows:  # each target met by the LUT's own prediction, and smaller than the full network
        assert row["predicted"] <= row["target"] < full_ms
        assert row["predicted"] == pytest.approx(lut.predict(row["spec"]))
        assert row["arch_yaml"].is_file() and row["weights"].is_file()
    assert 0 < metrics["test_top1"] <= 1 and metrics["predicted_ms"] == pytest.approx(found.rows[-1]["predicted"])
    assert Path(report["path"]).is_file() and report["max_abs_diff_vs_torch"] < 1e-4
    out = capsys.readouterr().out
    assert "test top-1" in out and "max |difference| from torch" in out
    assert sum(p.numel() for p in scope["model"].parameters()) == pytest.approx(metrics["params_M"] * 1e6, rel=1e-3)
