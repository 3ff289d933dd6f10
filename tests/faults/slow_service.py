"""`python system.py`, but every commit takes SLOW_COMMIT_SECONDS longer: a slow disk, for the
backpressure fault test. Started by the test in place of system.py."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import system  # noqa: E402
from actors.writer import WriterActor  # noqa: E402

DELAY = float(os.environ["SLOW_COMMIT_SECONDS"])
_write = WriterActor._write


def slow_write(self, batches, *args):
    time.sleep(DELAY)
    return _write(self, batches, *args)


WriterActor._write = slow_write

if __name__ == "__main__":
    sys.exit(system.main())
