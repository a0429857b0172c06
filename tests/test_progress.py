"""Progress in logs: short lines every 5% when the output is not a terminal."""

import io

from dynalab.train import LineProgress, progress_bar


def test_a_log_gets_one_line_per_five_percent_and_no_carriage_returns(capsys):
    out = io.StringIO()
    bar = progress_bar(1000, 0, "sac gym:Hopper-v5", True, stream=out)
    assert isinstance(bar, LineProgress)
    for k in range(1000):
        bar.update(1)
        if k == 500:
            bar.set_postfix(eval="12.5", refresh=False)
    bar.write("step 1000: eval return per seed [1.0]")
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 20  # 50, 100, ..., 1000 steps
    assert lines[0].startswith("sac gym:Hopper-v5: 5% (50/1,000 steps, ")
    assert lines[19].startswith("sac gym:Hopper-v5: 100% (1,000/1,000 steps, ") and lines[19].endswith(", eval=12.5)")
    assert capsys.readouterr().out == "step 1000: eval return per seed [1.0]\n"  # stdout, as tqdm.write


def test_a_resumed_run_continues_from_its_step():
    out = io.StringIO()
    bar = progress_bar(100, 42, "x", True, stream=out)
    for _ in range(58):
        bar.update(1)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == [f"x: {p}%" for p in range(45, 101, 5)]


def test_disabled_prints_nothing():
    out = io.StringIO()
    bar = progress_bar(100, 0, "x", False, stream=out)
    for _ in range(100):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""
