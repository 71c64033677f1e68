"""Keep a local pipeline run readable: full task logs to a file, progress lines to the terminal.

kfp.local streams every task's log (executor input JSON included) to stdout. During a run this
module points file descriptors 1 and 2, which the task subprocesses inherit, at a pipe; a thread
writes everything to ``<run-dir>/pipeline.log`` and echoes to the terminal only the lines a
person follows: tasks starting and finishing, training progress, warnings and errors.
"""

import contextlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Iterator

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHOWN = re.compile(
    r"Executing task|finished with status|Running pipeline|phase \d+/\d+ iter|training done|"
    r"images in .* img/s|skipping unreadable| [WE] \[rank|Traceback|Error|error:"
)


def is_progress_line(line: str) -> bool:
    """Whether a (colour-stripped) log line is echoed to the terminal."""
    return bool(_SHOWN.search(line)) and '"' not in line[:40]


@contextlib.contextmanager
def progress_only(log_path: Path, *, verbose: bool = False) -> Iterator[None]:
    """Send fds 1 and 2 to ``log_path``; echo progress lines (all lines when ``verbose``).

    On an exception the last 40 lines of the log are echoed before it propagates.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    tail = []

    def pump() -> None:
        with open(log_path, "ab") as log, os.fdopen(read_fd, "rb") as pipe, \
                os.fdopen(os.dup(saved_out), "w") as term:
            for raw in pipe:
                log.write(raw)
                text = _ANSI.sub("", raw.decode("utf-8", "replace"))
                tail.append(text)
                del tail[:-40]
                if verbose or is_progress_line(text):
                    term.write(text.strip() + "\n")
                    term.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    failed = False
    saved_streams = sys.stdout, sys.stderr
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (closed below)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stdout.close()
        sys.stderr.close()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        thread.join(timeout=30)
        os.close(saved_out)
        os.close(saved_err)
        if failed and not verbose:
            print("".join(tail), file=sys.stderr)
        print(f"full log: {log_path}")
