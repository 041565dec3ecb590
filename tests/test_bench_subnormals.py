"""bench/subnormals.py: its subnormal operands really are subnormal (and the normal ones normal),
and a run with one timed call per op writes every op's two timings and their ratio."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import subnormals  # noqa: E402

import pyregnet  # noqa: E402

TINY = np.finfo(np.float32).tiny


def test_operands_are_subnormal_only_where_asked():
    small = subnormals.operands(True)((1000,), True)
    assert np.all((np.abs(small) < TINY) & (small != 0))
    for a in (subnormals.operands(True)((1000,)), subnormals.operands(False)((1000,), True)):
        assert np.all(np.abs(a) >= TINY)


def test_a_run_writes_every_op(tmp_path, capsys):
    path = tmp_path / "out.json"
    subnormals.main(["--warmup", "0", "--repeats", "1", "--json", str(path)])
    result = json.loads(path.read_text())
    assert result["flush_denormals"] == pyregnet.build_info()["flush_denormals"]
    assert result["meta"]["device"] == "cpu" and result["meta"]["commit"]
    assert set(result["ops"]) == set(subnormals.cases(False))
    for name, entry in result["ops"].items():
        assert entry["normal"]["n"] == entry["subnormal"]["n"] == 1, name
        assert entry["ratio"] == pytest.approx(entry["subnormal"]["median"] / entry["normal"]["median"]), name
    assert "dense_forward" in capsys.readouterr().out


def test_bad_repeats_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        subnormals.main(["--repeats", "0"])
    assert e.value.code == 2 and "--repeats" in capsys.readouterr().err
