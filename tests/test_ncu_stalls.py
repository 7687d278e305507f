"""benchmarks/ncu_stalls.py: the stall summary of Nsight Compute's source-page CSV."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "ncu_stalls.py"
_spec = importlib.util.spec_from_file_location("ncu_stalls", _PATH)
ncu_stalls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ncu_stalls)

HEADER = (
    '"Address","Source","Warp Stall Sampling (All Samples)","stall_long_sb","stall_wait","stall_long_sb (Not Issued)"'
)
CSV = "\n".join(
    [
        '"Kernel Name","_k_a",',
        HEADER,
        '"0x10","FADD R1, R1, R2","30","27","3","27"',
        '"0x20","LDG.E R2, desc[UR4][R4.64]","10","0","10","0"',
        '"0x30","MUFU.EX2 R3, R3","60","0","60","0"',
        '"Kernel Name","_k_b",',
        HEADER,
        '"0x40","STS.128 [R3], R4","5","5","0","5"',
    ]
)


def test_summary_shares_and_order(tmp_path, capsys):
    path = tmp_path / "src.csv"
    path.write_text(CSV)
    blocks = list(ncu_stalls.kernels(CSV))
    assert [name for name, _, _ in blocks] == ["_k_a", "_k_b"]
    name, header, rows = blocks[0]
    text = ncu_stalls.summarise(name, header, rows, top=2)
    lines = text.splitlines()
    assert lines[0] == "_k_a: 100 samples, 3 instructions"
    # the "Not Issued" column is not a reason of its own
    assert lines[1].split() == ["wait=73.0%", "long_sb=27.0%"]
    # the two instructions with the most samples, most first, with their long-scoreboard share
    assert "0x30" in lines[2] and "60.00%" in lines[2] and "MUFU.EX2" in lines[2]
    assert "0x10" in lines[3] and "long_sb 27.00%" in lines[3]
    assert len(lines) == 4


def test_missing_columns_are_named():
    with pytest.raises(SystemExit, match=r"lacks the columns \['Warp Stall Sampling \(All Samples\)'\]"):
        ncu_stalls.summarise("_k", ["Address", "Source"], [], top=1)
