#!/usr/bin/env python3
"""Time one changed input against a no-op of the same build, round after round.

Usage: changed_input.py DIR FILE ROUNDS -- COMMAND...

Each round runs COMMAND once so nothing is left to do, waits 1.1 s (what changed
within the last second is checked in full once more by qflow, as git does), then
times COMMAND with nothing to do (the no-op), writes new content to FILE (under
DIR) and times COMMAND again (the changed input). A user edits a file seconds
after the last build; timed back to back, each changed build would start the moment
the previous one ended. Both times come from the same round, so a machine that slows
down for a while slows both (on a 2-core VM the no-op alone drifted by half within
minutes).

Prints one line: the no-op's median, the changed input's median and the median of
each round's difference, in milliseconds.
"""

import random
import statistics
import subprocess
import sys
import time


def timed(command, cwd):
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def main():
    if len(sys.argv) < 6 or sys.argv[4] != "--":
        sys.exit(__doc__)
    work, changed, rounds, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[5:]
    noops, changes = [], []
    for _ in range(rounds):
        subprocess.run(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        time.sleep(1.1)
        noops.append(timed(command, work))
        with open(f"{work}/{changed}", "w") as f:
            f.write(str(random.random()))
        changes.append(timed(command, work))
    diffs = [c - n for n, c in zip(noops, changes)]
    print(f"{statistics.median(noops):.1f} {statistics.median(changes):.1f} {statistics.median(diffs):.1f}")


if __name__ == "__main__":
    main()
