"""Crash chaos at CI size (issue 4, point 1): tests/chaos/run.py's core with
40 clips, 4 senders and 2 SIGKILLs of the gate while pushes run. Nothing any
sender saw acknowledged is lost: each has exactly one judged verdict row and
each satisfactory one reached the downstream storescp."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("chaos_run", Path(__file__).parent / "chaos" / "run.py")
chaos_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos_run)


def test_sigkill_chaos_loses_nothing(tmp_path):
    f = chaos_run.run_chaos(tmp_path, clips=40, senders=4, kills=2, timeout=150, seed=4242)
    print(f"\nchaos: pushed {f['pushed']} / acknowledged {f['acknowledged']} / judged {f['judged']} / "
          f"forwarded {f['forwarded']} / lost {f['lost']} / duplicates {f['duplicates_downstream']}")
    assert f["kills"] == 2, f
    assert f["settled"], f
    assert f["acknowledged"] == f["pushed"], f  # every sender got through in the end
    assert f["judged"] == f["acknowledged"], f  # exactly one judged verdict row each
    assert f["forwarded"] == f["satisfactory"], f
    assert f["lost"] == 0, f["lost_uids"]
    assert f["held_but_forwarded"] == 0, f
