"""Does compare's announced time hold, and how much does its measuring add to the training?

Runs ``pyro-vae compare`` as a new user would, the default five objectives (elbo,
elbo-analytic-kl, iwae, stl, dreg) at K = 5 on the embedded digits (mnist5k) at a small step
budget, with the default measuring (scaled down to add at most 50% to the training time), and
records

* the estimate compare announced before training (from its calibration) against the whole run's
  measured time, and their ratio;
* the measuring's share: seconds of curves, gradient statistics, final scores and SNR against K
  over the seconds of training, beside the budget's 50%;
* the measuring settings the scaling chose.

    python benchmarks/compare_budget.py                          # 200 steps, about 3 minutes on 2 cores
    python benchmarks/compare_budget.py --budget 100steps --seeds 2
    python benchmarks/compare_budget.py --smoke                  # seconds (what the tests run)

Writes result.md and result.json into --out (default benchmarks/results/compare-budget); the
comparison's own folder goes to --work (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import machine

from pyro_vae import Config
from pyro_vae.compare import MEASURE_SHARE, Budget, Comparison, parse_objectives

OBJECTIVES = "elbo,elbo-analytic-kl,iwae,stl,dreg"
MEASURING = ("curves", "gradients", "final", "snr")


def run(args: argparse.Namespace, work: Path) -> dict:
    raw = {"data": {"name": "synthetic", "n_train": 256, "n_test": 64, "side": 8}, "eval": {"samples": 50},
           "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}}} if args.smoke else {}
    said: list[str] = []

    def log(line: str) -> None:
        said.append(line)
        print(line, flush=True)

    comparison = Comparison(Config.from_dict(raw), parse_objectives(args.objectives, args.particles),
                            Budget.parse(args.budget), work / "compare", particles=args.particles, seeds=args.seeds,
                            progress=False, log=log)
    started = time.perf_counter()
    comparison.run()
    wall = time.perf_counter() - started
    t, est = comparison.timings, comparison.estimated
    measuring = sum(t.get(p, 0.0) for p in MEASURING)
    return {
        "machine": machine(), "objectives": args.objectives, "particles": args.particles, "budget": args.budget,
        "seeds": args.seeds, "data": comparison.config.data["name"],
        "announced": next(line for line in said if line.startswith("estimate:")),
        "estimate": est, "measured": t, "wall_seconds": wall,
        "measured_over_estimate": t["total"] / est["total"],
        "measuring_seconds": measuring, "training_seconds": t.get("training", 0.0),
        "measuring_share_of_training": measuring / max(t.get("training", 0.0), 1e-9),
        "estimated_measuring_share": est["measuring"] / max(est["training"] + est["setup"], 1e-9),
        "measuring_settings": {k: getattr(comparison.measuring, k) for k in
                               ("curve_points", "curve_samples", "grad_draws", "grad_batch", "snr_ks", "final_samples")},
        "scaled": comparison.scaled_note,
    }


def markdown(r: dict) -> str:
    phases = ("calibration", "setup", "training", *MEASURING, "writing", "total")
    lines = ["# compare's announced time against the measured one\n",
             f"`pyro-vae compare --objectives {r['objectives']} --particles {r['particles']} --budget {r['budget']} "
             f"--seeds {r['seeds']}` (default measuring) on {r['data']}; {r['machine']}.\n",
             f"Announced before training: \"{r['announced']}\"\n",
             "| phase | estimated s | measured s |", "| --- | --- | --- |"]
    lines += [f"| {p} | {r['estimate'].get(p, float('nan')):.1f} | {r['measured'].get(p, float('nan')):.1f} |"
              for p in phases]
    limit = r["estimate"].get("limit")
    if limit is not None:
        inside = "inside" if r["measured"]["total"] <= limit else "**beyond**"
        lines.append(f"| announced upper figure (the estimate + {100 * (limit - r['estimate']['calibration']) / max(r['estimate']['total'] - r['estimate']['calibration'], 1e-9) - 100:.0f}%) | {limit:.1f} | {r['measured']['total']:.1f}: {inside} |")
    s = r["measuring_settings"]
    lines += ["",
              f"Measured / estimated, whole run: **{r['measured_over_estimate']:.2f}**. Measuring (curves, gradient "
              f"statistics, final scores, SNR against K): {r['measuring_seconds']:.0f} s against "
              f"{r['training_seconds']:.0f} s of training = **{r['measuring_share_of_training']:.0%}** on top "
              f"(the default aims at most {MEASURE_SHARE:.0%}; estimated {r['estimated_measuring_share']:.0%}).",
              "",
              f"Measuring settings chosen: curve points {s['curve_points']}, curve K {s['curve_samples']}, gradient "
              f"draws {s['grad_draws']} on {s['grad_batch']} digits, SNR at K = {', '.join(map(str, s['snr_ks']))}, "
              f"final log p(x) at K = {s['final_samples']}." + (f" ({r['scaled']}.)" if r["scaled"] else "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", default=OBJECTIVES)
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--budget", default="200steps")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "compare-budget"))
    parser.add_argument("--work", help="folder for the comparison itself (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data (what the tests run)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(args.work) if args.work else Path(tmp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "result.md").write_text(markdown(result))
    print("\n" + markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
