"""Progress bars: a line per redraw on a pipe, nothing without a stream."""

from __future__ import annotations

import io

from radsim.progress import bar


def test_a_pipe_gets_whole_lines_and_the_final_count():
    stream = io.StringIO()
    progress = bar(5, "points", stream)
    for _ in range(5):
        progress.update(1)
    progress.set_postfix_str("1 failed")
    progress.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert "5/5 points, 1 failed" in text.splitlines()[-1]


def test_no_stream_draws_nothing(capsys):
    progress = bar(3, "requests", None)
    progress.update(3)
    progress.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
