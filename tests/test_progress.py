"""Progress reporting: a bar in a terminal, plain periodic lines when the stream is not one."""
import io

from dlsn.sr.progress import _PlainProgress, format_duration, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_redirected_output_gets_plain_lines_not_frames():
    stream = io.StringIO()
    bar = progress(total=1000, desc="train", unit="it", file=stream, interval=0.0)
    assert isinstance(bar, _PlainProgress)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss="0.1000")
    bar.write("wrote x.png")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert lines[0].startswith("train: 1/1000 it (0%) elapsed 0:00:00 ETA ")
    assert "wrote x.png" in lines and lines[-1].endswith("loss=0.1000")


def test_plain_lines_are_periodic():
    stream = io.StringIO()
    bar = progress(total=10, desc="tiles", file=stream, interval=3600.0)
    for _ in range(10):
        bar.update(1)
    bar.close()
    bar.close()
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]  # only the closing line
    assert stream.getvalue().startswith("tiles: 10/10 it (100%)")


def test_terminal_gets_a_bar():
    stream = _Terminal()
    bar = progress(total=5, desc="upscale", file=stream)
    assert not isinstance(bar, _PlainProgress)
    bar.update(5)
    bar.close()
    assert "\r" in stream.getvalue()


def test_format_duration():
    assert format_duration(7) == "0:00:07"
    assert format_duration(4 * 3600 + 5 * 60 + 6) == "4:05:06"
    assert format_duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3 d 04:05:06"
