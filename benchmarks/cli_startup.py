"""How long the command line takes to answer --help, a usage error and a small command (``sample
RUN --n 16``), against importing torch, and where the small command's time goes.

Each command is a fresh Python process (what a user waits for), timed wall-clock; the commands
alternate within each round, and the table gives the median over rounds and its ratio to
``python -c "import torch"`` in the same round. The command line imports torch and pyro only when
a command runs (``tests/test_cli.py`` checks --help and usage errors import neither), so its
--help should cost a fraction of the torch import. ``sample`` runs on a run of the default model
trained for one epoch at the start (``--run`` to give one); its time is then split by ``python -X
importtime`` into the imports of torch, pyro and the rest, and what is left: loading the run,
drawing, writing the PNG.

``--against TREE`` adds the same ``sample`` from an earlier checkout of the library (``git worktree
add TREE COMMIT``; its own run, trained by it; ``PYTHONPATH=TREE``) to the rounds, and ``--cores 1``
pins every command to one core (what a user with one core waits for).

    python benchmarks/cli_startup.py --rounds 10
    python benchmarks/cli_startup.py --rounds 5 --cores 1 --against ../then   # against an earlier commit
    python benchmarks/cli_startup.py --rounds 1      # smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "pyro-vae --help": [sys.executable, "-m", "pyro_vae", "--help"],
    "pyro-vae train --help": [sys.executable, "-m", "pyro_vae", "train", "--help"],
    "pyro-vae train --no-such-flag (usage error)": [sys.executable, "-m", "pyro_vae", "train", "--no-such-flag"],
    'python -c "import pyro_vae.training" (what a command imports)': [sys.executable, "-c", "import pyro_vae.training"],
}
BASE = 'python -c "import torch"'
SAMPLE = "pyro-vae sample RUN --n 16"


def imports_of(command: list[str], pin=None) -> tuple[dict[str, float], float]:
    """(seconds of the imports of torch, pyro (without torch), pyro_vae (without either) and the rest;
    the whole command's wall seconds) of one run of ``command`` under ``python -X importtime``. Each
    package is counted by the cumulative time of its root module's import, wherever it was first
    imported from, less the other packages imported inside it."""
    start = time.perf_counter()
    err = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True,
                         preexec_fn=pin).stderr
    total = time.perf_counter() - start
    lines = []  # (indent, name, cumulative seconds), children before their parent
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            lines.append((len(m[2]), m[3], int(m[1]) / 1e6))

    def inside(i: int) -> range:  # the lines of import i's subtree (just before it, deeper)
        j = i
        while j > 0 and lines[j - 1][0] > lines[i][0]:
            j -= 1
        return range(j, i)

    roots = {name: i for i, (_, name, _) in enumerate(lines) if name in ("torch", "pyro")}
    seconds = {}
    for name, i in roots.items():
        nested = sum(lines[j][2] for other, j in roots.items() if other != name and j in inside(i))
        seconds[name] = lines[i][2] - nested
    top = [i for i, (indent, _, _) in enumerate(lines) if indent == 1]
    for key in ("pyro_vae", "other"):
        mine = [i for i in top if (lines[i][1].split(".")[0] == "pyro_vae") == (key == "pyro_vae")]
        seconds[key] = sum(lines[i][2] - sum(lines[j][2] for j in roots.values() if j in inside(i)) for i in mine)
    return seconds, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--run", type=Path, help="a run folder for sample (default: the default model, 1 epoch)")
    parser.add_argument("--against", type=Path, help="an earlier checkout of the library: its sample timed too")
    parser.add_argument("--cores", type=int, help="pin every command to this many cores (default: all)")
    args = parser.parse_args(argv)
    pin = (lambda: os.sched_setaffinity(0, range(args.cores))) if args.cores else None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    print(f"machine: {cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
          f"{f' (each command pinned to {args.cores})' if args.cores else ''}, python {platform.python_version()}")
    scratch = tempfile.TemporaryDirectory()
    run = args.run or Path(scratch.name) / "run"
    train = [sys.executable, "-m", "pyro_vae", "train", "--set", "train.epochs=1", "--quiet", "--out"]
    if args.run is None:
        subprocess.run([*train, str(run)], check=True)
    COMMANDS[SAMPLE] = [sys.executable, "-m", "pyro_vae", "sample", str(run), "--n", "16", "--out",
                        str(Path(scratch.name) / "s.png"), "--overwrite"]
    env = {name: None for name in COMMANDS}
    if args.against:
        then = {**os.environ, "PYTHONPATH": str(args.against.resolve())}
        subprocess.run([*train, str(Path(scratch.name) / "then")], check=True, env=then)
        name = f"{SAMPLE} at {args.against.name} (the earlier checkout)"
        COMMANDS[name] = [*COMMANDS[SAMPLE][:4], str(Path(scratch.name) / "then"), *COMMANDS[SAMPLE][5:]]
        env[name] = then
    names = list(COMMANDS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            done = subprocess.run(COMMANDS[name], capture_output=True, env=env[name], preexec_fn=pin, text=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode not in (0, 2) or (done.returncode == 2 and "usage error" not in name):
                raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    print("\n| command | seconds (median) | ratio to importing torch |\n| --- | --- | --- |")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(times[name], times[BASE]))
        print(f"| {name} | {statistics.median(times[name]):.3f} | {ratio:.2f}x |")
    print(f"\n{args.rounds} rounds, commands alternating; each a fresh process")
    parts = [imports_of(COMMANDS[SAMPLE], pin) for _ in range(args.rounds)]
    total = statistics.median(t for _, t in parts)
    print(f"\n`{SAMPLE}`, where its time goes (median of {args.rounds} runs under -X importtime, {total:.3f} s "
          f"in all):\n\n| part | seconds | share |\n| --- | --- | --- |")
    for key in ("torch", "pyro", "pyro_vae", "other"):
        value = statistics.median(p.get(key, 0.0) for p, _ in parts)
        print(f"| import {key} | {value:.3f} | {value / total:.0%} |")
    rest = statistics.median(t - sum(p.values()) for p, t in parts)
    print(f"| the rest: interpreter start, loading the run, drawing, the PNG | {rest:.3f} | {rest / total:.0%} |")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
