"""`mili doctor` says what works and what to fix, one line each."""

from __future__ import annotations

from pathlib import Path

import mili.doctor as doctor


def test_doctor_reports_each_check_and_fails_on_a_missing_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(doctor, "_probe", lambda device, interpret: None)  # the Triton run takes seconds
    assert doctor.main([]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for line in ("ok    Python", "ok    PyTorch", "ok    the tiny model", "everything needed is here"):
        assert line in out, out

    monkeypatch.setattr(doctor, "TINY_MODEL", Path("no") / "such-model")
    monkeypatch.setenv("MILI_IMPL", "students")
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "FIX   the tiny model" in out and "FIX   MILI_IMPL=students" in out and "2 things to fix" in out
