"""Progress off a terminal: quiet for short work, one plain line per QUIET_EVERY seconds of long work."""
import io

import edgeinfer.progress as progress_mod
from edgeinfer.progress import QUIET_EVERY, Progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_long_work_off_a_terminal_writes_plain_lines_with_an_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    out = io.StringIO()
    with Progress("pruning sensitivity", 10, stream=out) as p:
        p.update()                          # at once: nothing yet
        assert out.getvalue() == ""
        clock.t += QUIET_EVERY + 1
        p.update()                          # 2/10 after 31 s: eta 124 s
        clock.t += 1
        p.update()                          # within QUIET_EVERY of the last line: quiet
        clock.t += QUIET_EVERY
        p.update()
        p.update(6)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 3 and "2/10" in lines[0] and "eta   124s" in lines[0] and "4/10" in lines[1]
    assert "10/10" in lines[2] and "eta" not in lines[2]


def test_short_work_off_a_terminal_writes_only_the_final_line(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    out = io.StringIO()
    with Progress("calibrating", 3, stream=out) as p:
        for _ in range(3):
            clock.t += 1
            p.update()
    assert out.getvalue().count("\n") == 1 and "3/3" in out.getvalue()
    silent = io.StringIO()
    with Progress("calibrating", 3, enabled=False, stream=silent) as p:
        clock.t += 5 * QUIET_EVERY
        p.update()
    assert silent.getvalue() == ""
