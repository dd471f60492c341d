"""How long the command line takes to answer --help and a usage error, against importing torch.

Each command is a fresh Python process (what a user waits for), timed wall-clock; the commands
alternate within each round, and the table gives the median over rounds and its ratio to
``python -c "import torch"`` in the same round. The command line imports torch and pyro only when
a command runs (``tests/test_cli.py`` checks --help and usage errors import neither), so its
--help should cost a fraction of the torch import.

    python benchmarks/cli_startup.py --rounds 10
    python benchmarks/cli_startup.py --rounds 1      # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "pyro-vae --help": [sys.executable, "-m", "pyro_vae", "--help"],
    "pyro-vae train --help": [sys.executable, "-m", "pyro_vae", "train", "--help"],
    "pyro-vae train --no-such-flag (usage error)": [sys.executable, "-m", "pyro_vae", "train", "--no-such-flag"],
    'python -c "import pyro_vae.training" (what a command imports)': [sys.executable, "-c", "import pyro_vae.training"],
}
BASE = 'python -c "import torch"'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    names = list(COMMANDS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            subprocess.run(COMMANDS[name], capture_output=True)
            times[name].append(time.perf_counter() - start)
    print("\n| command | seconds (median) | ratio to importing torch |\n| --- | --- | --- |")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(times[name], times[BASE]))
        print(f"| {name} | {statistics.median(times[name]):.3f} | {ratio:.2f}x |")
    print(f"\n{args.rounds} rounds, commands alternating; each a fresh process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
