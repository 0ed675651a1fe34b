"""`python -m forgetless.ui.worker EXIT_FILE ARGS...`: run `forgetless ARGS...` and write its exit code
to EXIT_FILE when it ends.

The UI starts training through this so that it can tell a failed run from a stopped one even when the
UI itself was closed in between. The worker leads its own process group (the UI starts it in a new
session); the UI's stop button sends SIGINT to the group: the training process saves a checkpoint and
exits with 130, and the worker, which lets SIGINT pass, records that.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from forgetless import files


def main(argv: list[str]) -> int:
    exit_file, args = Path(argv[0]), argv[1:]
    # The child decides what an interrupt means. A handler (not SIG_IGN, which exec would pass on) is
    # reset to the default in the child, so the child's Python turns SIGINT into KeyboardInterrupt.
    signal.signal(signal.SIGINT, lambda *_: None)
    rc = 1
    try:
        rc = subprocess.call([sys.executable, "-m", "forgetless", *args])
    finally:
        files.write_text(exit_file, str(rc))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
