"""The ``jaxplan`` command's entry point. It takes over Ctrl-C before JAX and the rest load, so an
interrupt at any moment (imports, compilation, evaluation, writing) exits with code 130 and one
line: the temporary files of writes in progress are removed and the process ends at once, without
a traceback and without the interpreter's teardown (which can crash while XLA threads compile)."""
from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130


def _interrupted(signum, frame) -> None:
    report = sys.modules.get("jaxplan.report")
    if report is not None:
        report.remove_pending()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.write(2, b"\njaxplan: interrupted\n")
    os._exit(INTERRUPTED)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, _interrupted)
    # the command line loads JAX; imported here, after the handler is in place
    from .cli import main as cli_main
    rc = cli_main(argv)
    # The work is done and its files are complete. The interpreter's teardown resets a Python-level
    # handler to the default one, so a Ctrl-C during teardown would kill the process by signal;
    # ignoring it from here (an ignored signal is left as is) lets the finished run exit with rc.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return rc


if __name__ == "__main__":
    sys.exit(main())
