"""Argo CD's health check for BotPlugin (charts/precinct/argocd/health.lua),
run through a real Lua interpreter (lupa) on the table in
charts/precinct/argocd/health_test_cases.yaml: Healthy, Progressing,
Degraded and Suspended cases. Argo CD runs the script with the object as the
global `obj` and reads `status` and `message` from the table it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lupa = pytest.importorskip("lupa", reason="PyPI lupa (the test extra) runs the Lua health check")

ARGOCD = Path(__file__).resolve().parents[1] / "charts" / "precinct" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
CASES = yaml.safe_load((ARGOCD / "health_test_cases.yaml").read_text())


def to_lua(lua: Any, value: Any) -> Any:
    """Python -> Lua the way Argo CD hands objects over: maps and 1-based arrays."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval("function(obj) " + SCRIPT + "\nend")
    result = check(to_lua(lua, obj))
    return {"status": result["status"], "message": result["message"]}


def test_every_status_is_covered():
    assert {case["status"] for case in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health(case: dict[str, Any]):
    got = health(case["obj"])
    assert got["status"] == case["status"], got
    assert case["message"] in got["message"], got


def test_the_operator_vocabulary_maps_as_documented():
    """Every Ready=False reason docs/operator.md lists is Degraded except
    Starting (Progressing) and Suspended (Suspended)."""
    expected = {"Starting": "Progressing", "Suspended": "Suspended"}
    for reason in ("Starting", "OOMKilled", "CrashLoopBackOff", "ExitCode137", "ImagePullBackOff",
                   "CommandConflict", "SubjectConflict", "Suspended", "InvalidSpec", "NatsUnavailable"):
        obj = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": reason, "message": "m"}]}}
        assert health(obj)["status"] == expected.get(reason, "Degraded"), reason
