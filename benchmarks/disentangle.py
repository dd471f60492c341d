"""Disentangling objectives on the generated dSprites: MIG, DCI, SAP, the FactorVAE score and the log p(x) each costs.

For each objective (``--models``: beta-VAE at beta = 1 and 4, beta-TC-VAE at TC weight 6, FactorVAE at
gamma ``--gamma``) and seed (``--seeds``): a VAE (MLP ``--hidden``, z ``--latent-dim``-D, Bernoulli
pixels) trained on ``--n-train`` images of the procedurally generated dSprites (``data.name =
"dsprites"``, seed 0: the same images for every run; the run's seed changes the initialization and
the batches) for ``--epochs`` epochs each (the same number of steps for every objective, whatever
else runs on the machine; ``--minutes`` adds a wall-time cap). The budget is a few hundred CPU
steps, far below the published models' hundreds of thousands of GPU steps: compare orders, not
values. Then, on ``--points`` test images: MIG, DCI, SAP (bootstrap standard errors over
``--resamples`` resamples), the FactorVAE score (``--factorvae-votes``: 200 + 100 votes, 2,000
variance samples; disentanglement_lib's study used 10,000 + 5,000), the KL's
decomposition (index-code MI, total correlation, dimension-wise KL over the test images' aggregate
posterior), and log p(x) importance-sampled with ``--samples`` draws per image on the first
``--evidence-points`` of them (nats per datapoint). The spread over seeds is the standard deviation of the seeds' values.

Then the step time of ``beta-tc`` against ``elbo`` at batch ``--timing-batch`` (one SVI step:
surrogate, backward, Adam), interleaved over ``--timing-rounds`` rounds of ``--timing-steps`` steps,
the median per step, with the machine printed.

    python benchmarks/disentangle.py --out benchmarks/results/disentangle     # about 15 minutes on 2 busy CPU cores

Writes ``--out``/result.json (every number, the command, the machine), ``--out``/result.md and
``--out``/price.png (log p(x) against MIG, one point per run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine as describe_machine  # noqa: E402

from pyro_vae import Config, Trainer  # noqa: E402
from pyro_vae.config import DATASETS, OBJECTIVES  # noqa: E402
from pyro_vae.disentanglement import disentanglement_scores, kl_decomposition  # noqa: E402
from pyro_vae.evaluation import EvaluationSettings, evaluate  # noqa: E402
from pyro_vae.programs import build_model  # noqa: E402
from pyro_vae.terms import DirectSource  # noqa: E402
from pyro_vae.trained import load_run  # noqa: E402

SCORES = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "factorvae")
PARTS = ("kl", "mutual_information", "total_correlation", "dimension_wise_kl")


def objectives(gamma: float) -> dict[str, dict]:
    return {"beta-VAE, beta 1": {"name": "beta", "beta": 1.0}, "beta-VAE, beta 4": {"name": "beta", "beta": 4.0},
            "beta-TC-VAE, TC weight 6": {"name": "beta-tc", "tc_weight": 6.0},
            f"FactorVAE, gamma {gamma:g}": {"name": "factor", "gamma": gamma}}


def config_for(args, objective: dict, seed: int) -> Config:
    return Config.from_dict({
        "seed": seed,
        "data": {"name": "dsprites", "n_train": args.n_train, "n_test": args.n_test, "seed": 0},
        "model": {"latent_dim": args.latent_dim, "network": {"name": "mlp", "hidden": args.hidden},
                  "likelihood": {"name": "bernoulli"}},
        "train": {"objective": objective, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "max_minutes": args.minutes, "curve_every": 10_000},
        "eval": {"samples": args.samples, "train_subset": 64, "exact_points": 0},
    })


def one_run(args, objective: dict, seed: int, folder: Path, splits) -> dict:
    config = config_for(args, objective, seed)
    started = time.perf_counter()
    trainer = Trainer(config, folder, progress=False, log=lambda s: None, preloaded=splits).fit()
    seconds = time.perf_counter() - started
    run = load_run(folder)
    test = run.prepared.test[: args.points]
    ev = evaluate(run.program, test[: args.evidence_points], EvaluationSettings.of(run.config, args.samples)).summary()
    votes = dict(zip(("train_votes", "eval_votes", "variance_samples"), args.factorvae_votes))
    scores = disentanglement_scores(run, points=args.points, resamples=args.resamples, seed=seed,
                                    factorvae_options=votes)
    parts = kl_decomposition(run.program, test, seed=seed)
    return {"seed": seed, "steps": trainer.step, "epochs": trainer.epoch, "train_seconds": seconds,
            "log_px": ev["log_px"]["mean"], "log_px_stderr": ev["log_px"]["stderr"], "elbo": ev["elbo"]["mean"],
            **{k: scores[k] for k in SCORES}, **{k + "_stderr": scores[k + "_stderr"] for k in SCORES},
            **{"decomposition_" + k: parts[k] for k in PARTS}}


def spread(values: list[float | None]) -> dict:
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(kept), "sd": statistics.stdev(kept) if len(kept) > 1 else 0.0}


def step_times(args) -> dict:
    """Median ms per SVI step of elbo and beta-tc at one batch size, interleaved round by round."""
    torch.manual_seed(0)
    config = config_for(args, {"name": "elbo"}, 0)
    vae = build_model(config, (1, 64, 64)).module
    x = (torch.rand(args.timing_batch, 1, 64, 64) < 0.1).float()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-4)
    built = {"elbo": OBJECTIVES.build("elbo"),
             "beta-tc": OBJECTIVES.build({"name": "beta-tc", "dataset_size": args.n_train})}
    times: dict[str, list[float]] = {name: [] for name in built}

    def steps(objective, n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            surrogate, _ = objective.step(DirectSource(vae), x)
            surrogate.backward()
            optimizer.step()

    for name, objective in built.items():
        steps(objective, 2)  # warm-up
    for _ in range(args.timing_rounds):
        for name, objective in built.items():
            started = time.perf_counter()
            steps(objective, args.timing_steps)
            times[name].append(1000 * (time.perf_counter() - started) / args.timing_steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"batch": args.timing_batch, "ms_per_step": median, "rounds": times,
            "ratio": median["beta-tc"] / median["elbo"]}


def cell(stat: dict, digits: int = 3) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def table(result: dict) -> str:
    lines = ["| objective | log p(x) | MIG | DCI dis. | DCI compl. | DCI info. | SAP | FactorVAE score | "
             "TC (nats) | KL (nats) | steps |", "|" + " --- |" * 11]
    for name, summary in result["summary"].items():
        lines.append(f"| {name} | {cell(summary['log_px'], 1)} | {cell(summary['mig'])} | "
                     f"{cell(summary['dci_disentanglement'])} | {cell(summary['dci_completeness'])} | "
                     f"{cell(summary['dci_informativeness'])} | {cell(summary['sap'])} | {cell(summary['factorvae'])} | "
                     f"{cell(summary['decomposition_total_correlation'], 2)} | {cell(summary['decomposition_kl'], 2)} | "
                     f"{summary['steps']['mean']:.0f} |")
    t = result.get("timing")
    if t:
        lines.append("")
        lines.append(f"Step at batch {t['batch']} (median of {len(t['rounds']['elbo'])} interleaved rounds): elbo "
                     f"{t['ms_per_step']['elbo']:.1f} ms, beta-tc {t['ms_per_step']['beta-tc']:.1f} ms, ratio "
                     f"{t['ratio']:.2f}x.")
    return "\n".join(lines)


def picture(result: dict, path: Path) -> None:
    """The price of disentanglement: log p(x) against MIG, one point per run, one colour per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, runs in result["runs"].items():
        ax.scatter([r["mig"] for r in runs], [r["log_px"] for r in runs], label=name)
    ax.set_xlabel("MIG (test images)")
    ax.set_ylabel("log p(x), nats per datapoint")
    ax.set_title("The price of disentanglement: one point per seed", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="training epochs per model (the same steps for each)")
    p.add_argument("--minutes", type=float, default=0.0, help="a wall-time cap per model too (train.max_minutes; 0: none)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--points", type=int, default=1000, help="test images scored")
    p.add_argument("--resamples", type=int, default=5, help="bootstrap resamples of MIG, DCI, SAP")
    p.add_argument("--factorvae-votes", type=int, nargs=3, default=[200, 100, 2000],
                   metavar=("TRAIN", "EVAL", "VARIANCE"), help="the FactorVAE score's votes and variance samples")
    p.add_argument("--samples", type=int, default=20, help="importance samples per image for log p(x)")
    p.add_argument("--evidence-points", type=int, default=500, help="test images whose log p(x) is estimated")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[256])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=35.0, help="FactorVAE's TC weight (Kim & Mnih's dSprites choice)")
    p.add_argument("--models", nargs="+", help="a subset of the objectives, by the start of their names")
    p.add_argument("--timing-batch", type=int, default=256)
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--timing-steps", type=int, default=10)
    p.add_argument("--out", type=Path, help="folder for result.json, result.md and price.png")
    p.add_argument("--picture-from", type=Path, help="only draw price.png (into --out) from an earlier result.json")
    p.add_argument("--timing-only", action="store_true", help="only the step time of beta-tc against elbo")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.picture_from:
        picture(json.loads(args.picture_from.read_text()), (args.out or args.picture_from.parent) / "price.png")
        return 0
    machine = describe_machine()
    print(machine)
    if args.timing_only:
        t = step_times(args)
        print(f"step at batch {t['batch']} (median of {args.timing_rounds} interleaved rounds of {args.timing_steps}): "
              f"elbo {t['ms_per_step']['elbo']:.1f} ms, beta-tc {t['ms_per_step']['beta-tc']:.1f} ms, ratio "
              f"{t['ratio']:.2f}x")
        return 0
    splits = DATASETS.build({"name": "dsprites", "n_train": args.n_train, "n_test": args.n_test, "seed": 0}).load()
    chosen = {k: v for k, v in objectives(args.gamma).items()
              if not args.models or any(k.startswith(m) for m in args.models)}
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, objective in chosen.items():
            for seed in args.seeds:
                r = one_run(args, objective, seed, Path(tmp) / f"{objective['name']}-{len(runs)}-{seed}", splits)
                runs.setdefault(name, []).append(r)
                print(f"{name}, seed {seed}: {r['steps']} steps, log p(x) {r['log_px']:.1f}, MIG {r['mig']:.3f}, "
                      f"DCI {r['dci_disentanglement']:.3f}, SAP {r['sap']:.3f}", flush=True)
    keys = ("log_px", "elbo", *SCORES, *("decomposition_" + k for k in PARTS), "steps")
    summary = {name: {k: spread([r[k] for r in rs]) for k in keys} for name, rs in runs.items()}
    result = {"command": "python benchmarks/disentangle.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "units": "log p(x), ELBO and the decomposition in nats per datapoint; scores in [0, 1]; ± the standard "
                       "deviation over seeds",
              "runs": runs, "summary": summary, "timing": step_times(args) if args.timing_rounds > 0 else None}
    text = table(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "result.md").write_text(f"# Disentangling objectives on the generated dSprites\n\n`{result['command']}`"
                                            f"\n\n{machine}\n\n{result['units']}.\n\n{text}\n")
        picture(result, args.out / "price.png")
    return 0 if all(math.isfinite(r["log_px"]) for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
