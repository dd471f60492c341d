"""Semi-supervised M2 with few labels: test accuracy and log p(x), against a classifier trained on the labels alone.

For each label count N (``--labels``) and seed (``--seeds``), with the M2 of
``examples/configs/semi-supervised.toml`` (784-512-256 softplus MLPs, z 16-D, Bernoulli pixels,
y enumerated by ``enumerate``, alpha = ``--alpha``):

* **M2**: trained for ``--minutes`` of wall time (``train.max_minutes``) on the training split,
  of which N labels are shown (``data.labels = N``: N/10 per class, drawn by ``data.labels_seed =
  seed``) and the rest unlabelled; ``train.validation`` images held out, best.pt chosen by the
  validation ELBO (no labels used). Test accuracy of argmax_y q(y|x) ± s.e. over test images,
  the ELBO and log p(x) with y summed exactly (``eval.samples`` = ``--samples`` draws of z per class).
* **classifier alone**, twice: the same encoder and q(y|x) head, freshly initialized, trained by
  cross-entropy on the same N labelled images (Adam 1e-3, batches of min(100, N)) for at most
  ``--classifier-steps`` steps, keeping the step with the best validation accuracy (checked every
  50 steps on the validation images, labels used): a supervised-only baseline given every
  advantage. **As given**: on the images as the dataset holds them (grey pixels; validation and
  test images too): the baseline a user would run. **Binarized**: on the images as M2 sees its
  evaluation data (binarized with the fixed seed), as earlier rounds measured it.

``--baselines-only RESULT.json`` trains no M2: it measures the two baselines on the label draws of
an earlier result (the same seeds, so the same labelled images) and reports them beside that
result's M2 numbers.

    python benchmarks/semi_supervised.py --labels 100 400 1000 --minutes 3            # mnist5k
    python benchmarks/semi_supervised.py --data-dir ../shared/data/fashion-mnist --labels 100 3000 \\
        --minutes 15 --validation 10000 --samples 20

Writes ``--out``/result.json (every number, the commands, the machine) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine as describe_machine  # noqa: E402

from pyro_vae import Config, Trainer  # noqa: E402
from pyro_vae.config import DATASETS, apply_overrides  # noqa: E402
from pyro_vae.data import validation_split  # noqa: E402
from pyro_vae.evaluation import EvaluationSettings, evaluate  # noqa: E402
from pyro_vae.labelled import SemiSupervisedVAE  # noqa: E402
from pyro_vae.trained import load_run  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "semi-supervised.toml"


def stat(values: torch.Tensor) -> dict:
    return {"mean": values.double().mean().item(), "stderr": values.double().std().item() / math.sqrt(len(values))}


def images(trainer: Trainer, as_given: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, validation, test) images of the trainer's split: as the dataset holds them (grey), or
    as M2 sees its evaluation data (binarized with the fixed seed)."""
    data, cfg = trainer.data, trainer.config
    if not as_given:
        return trainer.program.contract.prepare_eval_set(data.train.float()), data.valid, data.test
    train = data.splits.train
    keep, held = validation_split(len(train), cfg.train.validation, cfg.seed)
    return train[keep], train[held], data.splits.test


def classifier_alone(config: Config, trainer: Trainer, steps: int, seed: int, as_given: bool) -> dict:
    """The M2's encoder + q(y|x) head, fresh, trained on the labelled images alone (see the docstring)."""
    data = trainer.data
    torch.manual_seed(seed)
    model = SemiSupervisedVAE(data_shape=tuple(data.train.shape[1:]), **{
        k: v for k, v in config.model.options.items() if k in ("num_classes", "latent_dim", "network", "likelihood")})
    params = [*model.encoder.parameters(), *model.q_y_logits.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    index = trainer.labelled_index
    train, valid, test = images(trainer, as_given)
    x_all, y_all = train[index.to(train.device)], data.train_labels[index]
    batch = min(100, len(index))
    generator = torch.Generator().manual_seed(seed)
    best, best_state, best_step = -1.0, None, 0

    def accuracy(x, y) -> torch.Tensor:
        with torch.no_grad():
            return (model.label_posterior(x).logits.squeeze(-2).argmax(-1) == y).double()

    for step in range(1, steps + 1):
        pick = torch.randperm(len(index), generator=generator)[:batch]
        logits = model.q_y_logits(model.encoder(x_all[pick]))
        loss = F.cross_entropy(logits, y_all[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            score = accuracy(valid, data.valid_labels).mean().item()
            if score > best:
                best, best_step = score, step
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {"test_accuracy": stat(accuracy(test, data.test_labels)), "valid_accuracy": best, "steps": best_step,
            "images": "as given (grey)" if as_given else "binarized (as M2's evaluation sees them)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="an IDX folder (Fashion-MNIST layout); unset: the embedded mnist5k")
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 400, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="M2 training wall time per run")
    parser.add_argument("--validation", type=int, default=500, help="training images held out (train.validation)")
    parser.add_argument("--alpha", type=float, default=50.0, help="classifier_weight alpha")
    parser.add_argument("--samples", type=int, default=100, help="K, draws of z per class for log p(x)")
    parser.add_argument("--classifier-steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("runs/semi-supervised"))
    parser.add_argument("--baselines-only", type=Path, metavar="RESULT.json",
                        help="train no M2: measure the baselines on the label draws of this earlier result")
    args = parser.parse_args(argv)
    machine = describe_machine()
    print(f"machine: {machine}")
    data = {"name": "fashion-mnist", "data_dir": args.data_dir} if args.data_dir else {"name": "mnist5k"}
    splits = DATASETS.build(data, "data").load()
    earlier = json.loads(args.baselines_only.read_text())["rows"] if args.baselines_only else None
    rows = [one_row(args, data, splits, n, seed, earlier) for n in args.labels for seed in args.seeds]
    summary = across_seeds(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine, "config": str(CONFIG.relative_to(CONFIG.parent.parent.parent)),
              "dataset": data["name"], "settings": vars(args) | {"out": str(args.out), "baselines_only":
                                                                 str(args.baselines_only)},
              "rows": rows, "across_seeds": summary,
              "units": "nats per datapoint; accuracy as a fraction of test images, ± its standard error"}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print_tables(rows, summary, args)
    return 0


def one_row(args, data: dict, splits, n_labels: int, seed: int, earlier: list[dict] | None) -> dict:
    """One label draw: M2 trained and scored (or its numbers from an earlier result), and the two baselines."""
    raw = apply_overrides(Config.load(CONFIG).to_dict(), [
        f"seed={seed}", f"data.labels={n_labels}", f"data.labels_seed={seed}", "train.epochs=100000",
        f"train.max_minutes={args.minutes}", f"train.validation={args.validation}",
        f"train.objective.classifier_weight={args.alpha}", f"eval.samples={args.samples}"])
    raw["data"] = {**raw["data"], **data}
    config = Config.from_dict(raw)
    run_dir = args.out / f"m2-labels{n_labels}-seed{seed}"
    trainer = Trainer(config, run_dir, progress=False, log=lambda line: None, preloaded=splits)
    if earlier is not None:  # the same label draw (seed) as the earlier result's row: only the baselines are new
        (row,) = [r for r in earlier if r["labels"] == n_labels and r["seed"] == seed]
        row = {**row, "m2_from": str(args.baselines_only)}
        trainer.start()
    else:
        started = time.perf_counter()
        trainer.fit(overwrite=True)
        train_seconds = time.perf_counter() - started
        run = load_run(run_dir, trust_code=False, splits=None)
        result = evaluate(run.program, run.data.prepared_test, EvaluationSettings.of(run.config),
                          labels=run.data.test_labels)
        s = result.summary()
        row = {"labels": n_labels, "seed": seed, "epochs": trainer.epoch, "steps": trainer.step,
               "train_seconds": train_seconds, "selected_epoch": run.epoch,
               "m2_test_accuracy": s["classification"]["accuracy"], "m2_test_elbo": s["elbo"],
               "m2_test_log_px": s["log_px"]}
    row["classifier_alone_as_given"] = classifier_alone(config, trainer, args.classifier_steps, seed, as_given=True)
    row["classifier_alone"] = classifier_alone(config, trainer, args.classifier_steps, seed, as_given=False)
    print(json.dumps(row))
    return row


def print_tables(rows: list[dict], summary: dict, args) -> None:
    print("\n| labels | seed | M2 epochs (selected) | M2 test accuracy | classifier alone, as given (grey) | "
          "classifier alone, binarized | M2 test ELBO | M2 test log p(x) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        a, g, c = r["m2_test_accuracy"], r["classifier_alone_as_given"]["test_accuracy"], \
            r["classifier_alone"]["test_accuracy"]
        print(f"| {r['labels']} | {r['seed']} | {r['epochs']} ({r['selected_epoch']}) | {a['mean']:.4f} ± "
              f"{a['stderr']:.4f} | {g['mean']:.4f} ± {g['stderr']:.4f} | {c['mean']:.4f} ± {c['stderr']:.4f} | "
              f"{r['m2_test_elbo']['mean']:.2f} | {r['m2_test_log_px']['mean']:.2f} ± {r['m2_test_log_px']['stderr']:.2f} |")
    if len(args.seeds) > 1:
        print(f"\nAcross the {len(args.seeds)} label draws (mean ± standard deviation over seeds):\n")
        print("| labels | M2 test accuracy | classifier alone, as given (grey) | classifier alone, binarized | "
              "M2 test log p(x) |")
        print("| --- | --- | --- | --- | --- |")
        for n, m in summary.items():
            print(f"| {n} | {m['m2_test_accuracy'][0]:.4f} ± {m['m2_test_accuracy'][1]:.4f} | "
                  f"{m['classifier_alone_as_given'][0]:.4f} ± {m['classifier_alone_as_given'][1]:.4f} | "
                  f"{m['classifier_alone'][0]:.4f} ± {m['classifier_alone'][1]:.4f} | "
                  f"{m['m2_test_log_px'][0]:.2f} ± {m['m2_test_log_px'][1]:.2f} |")


def across_seeds(rows: list[dict]) -> dict[int, dict[str, tuple[float, float]]]:
    """Per label count, the mean and standard deviation over seeds (label draws) of each headline
    number: the spread the tutorial reports (0 for a single draw)."""
    def mean_sd(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    out = {}
    for n in dict.fromkeys(r["labels"] for r in rows):
        mine = [r for r in rows if r["labels"] == n]
        out[n] = {"seeds": [r["seed"] for r in mine],
                  "m2_test_accuracy": mean_sd([r["m2_test_accuracy"]["mean"] for r in mine]),
                  "classifier_alone": mean_sd([r["classifier_alone"]["test_accuracy"]["mean"] for r in mine]),
                  "classifier_alone_as_given": mean_sd([r["classifier_alone_as_given"]["test_accuracy"]["mean"]
                                                        for r in mine]),
                  "m2_test_log_px": mean_sd([r["m2_test_log_px"]["mean"] for r in mine])}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
