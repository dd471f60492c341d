"""Compare training objectives on equal terms: same model, initialization, data order and budget.

For each objective the harness trains the VAE of a config from the same seed (so the same initial
parameters and the same sequence of minibatches) for the same budget, in steps or in seconds of
training time, and measures:

* test ELBO, the test IWAE bound at K (``--particles``), importance-sampled test log p(x)
  (``eval.samples``, default 1000), active units, training seconds and ms per step;
* along the way, at evenly spaced points, test ELBO and log p(x) (``curve_samples`` samples), for
  curves against steps and against seconds;
* gradient statistics at fixed parameter snapshots (start, middle, end of training): ``grad_draws``
  independent gradient estimates on one fixed minibatch, summarized separately for the encoder
  (inference network) and the decoder (generative model) as the variance (trace of the covariance)
  and the signal-to-noise ratio |E[g]| / std(g) (Rainforth et al. 2018);
* the encoder-gradient SNR against K for IWAE and DReG, at the final parameters of the IWAE run
  (or of the first run, if there is none).

Everything but the timings is deterministic for a seed on CPU with a step budget. A time budget
makes the number of steps depend on the machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyro
import torch

from . import plots
from .config import DATASETS, OBJECTIVES, Config, parse_value
from .errors import ConfigError, TrainingDiverged
from .evaluation import EvaluationSettings, evaluate
from .files import write_text
from .exact import ENUMERATION_MAX_STATES, enumeration_available
from .metrics import exact_gradient, gradient_statistics
from .runs import CONFIG, prepare_run_dir, run_lock
from .training import Trainer

SNAPSHOTS = ("start", "middle", "end")


@dataclass(frozen=True)
class Budget:
    """How long each objective trains: a number of steps, or seconds of training time."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Budget":
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(steps?|s|sec|seconds?|m|min|minutes?)?\s*", text)
        if not m:
            raise ConfigError(f"--budget {text!r}: give a number of steps (2000, 2000steps) or a time (90s, 5min).")
        value, unit = float(m.group(1)), (m.group(2) or "steps")
        if unit.startswith("step"):
            if value != int(value) or value < 1:
                raise ConfigError(f"--budget {text!r}: the number of steps must be a whole number >= 1.")
            return cls(steps=int(value))
        seconds = value * 60 if unit.startswith("m") else value
        if seconds <= 0:
            raise ConfigError(f"--budget {text!r} must be positive.")
        return cls(seconds=seconds)

    def describe(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.seconds:g} s of training"

    def fraction(self, step: int, seconds: float) -> float:
        return step / self.steps if self.steps is not None else seconds / self.seconds  # type: ignore[operator]


_ITEM = re.compile(r"^(?P<name>[\w-]+)(?:\((?P<options>[^()]*)\))?(?::(?P<k>\d+))?$")


def _items(text: str) -> list[str]:
    """The comma-separated items of --objectives (commas inside parentheses kept with their item)."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [t for t in [*items, current.strip()] if t]


def parse_objectives(text: str, particles: int) -> list[dict]:
    """``"elbo,iwae,dreg:64,score-function(baseline=none; decay=0.5):4"`` -> objective tables:
    NAME, options in parentheses (``key=value`` separated by ``;``, values in TOML syntax), and
    after a colon the samples per datapoint; an objective that draws samples and names no K gets
    ``particles``."""
    specs = []
    for item in _items(text):
        match = _ITEM.match(item)
        if match is None:
            raise ConfigError(f"--objectives: {item!r} should be NAME, NAME:K or NAME(key=value; ...):K, "
                              f"K a whole number.")
        name, k = match["name"], match["k"]
        options = {}
        for pair in [p.strip() for p in (match["options"] or "").split(";") if p.strip()]:
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"--objectives: {pair!r} in {item!r} should be key=value.")
            options[key.strip()] = parse_value(value.strip())
        takes_particles = "num_particles" in OBJECTIVES.get(name, "--objectives").option_specs()
        if k and not takes_particles:
            raise ConfigError(f"--objectives: {name!r} takes no number of samples (it draws none: {item!r}).")
        if "num_particles" in options:
            raise ConfigError(f"--objectives: give {name}'s samples after a colon ({name}:K), not as num_particles.")
        spec = {"name": name, **options, **({"num_particles": int(k) if k else particles} if takes_particles else {})}
        OBJECTIVES.build(spec, "--objectives")  # refuse unknown names and bad options now
        specs.append(spec)
    if not specs:
        raise ConfigError("--objectives is empty; e.g. --objectives elbo,elbo-analytic-kl,iwae,stl,dreg")
    labels = [label(s) for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--objectives lists the same objective twice: {', '.join(labels)}.")
    return specs


def _options(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in ("name", "num_particles")}


def _units(active: int | None, dim: int | None) -> str:
    return "-" if active is None else f"{active}/{dim}"


def title(spec: dict) -> str:
    """An objective's name with its options, as --objectives takes it: enumerate(classifier_weight=50)."""
    options = "; ".join(f"{k}={v}" for k, v in _options(spec).items())
    return f"{spec['name']}({options})" if options else spec["name"]


def label(spec: dict) -> str:
    name = title(spec)
    return f"{name} (K={spec['num_particles']})" if "num_particles" in spec else f"{name} (every state)"


def folder_name(spec: dict) -> str:
    options = "".join(f"-{k}-{v}" for k, v in _options(spec).items())
    name = re.sub(r"[^\w.-]+", "-", f"{spec['name']}{options}")
    return f"{name}-K{spec['num_particles']}" if "num_particles" in spec else name


@dataclass
class ObjectiveResult:
    spec: dict
    steps: int = 0
    train_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)
    gradients: dict[str, dict] = field(default_factory=dict)
    final: dict = field(default_factory=dict)

    def row(self, iwae_k: int, final_samples: int) -> dict:
        f = self.final
        row = {
            "objective": title(self.spec),
            "K": self.spec.get("num_particles"),  # (None: the objective sums over every state)
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "ms_per_step": 1000 * self.train_seconds / max(self.steps, 1),
            "test_elbo": f["elbo"],
            f"test_iwae_bound_K{iwae_k}": f["iwae_bound"],
            f"test_log_px_K{final_samples}": f["log_px"],
            "test_log_px_stderr": f["log_px_stderr"],
            "active_units": f["active_units"],
        }
        if "accuracy" in f:
            row["test_accuracy"], row["test_accuracy_stderr"] = f["accuracy"], f["accuracy_stderr"]
        if "exact_log_px" in f:  # (a discrete latent: every state summed)
            row["test_exact_log_px"], row["test_exact_log_px_stderr"] = f["exact_log_px"], f["exact_log_px_stderr"]
        for group in ("encoder", "decoder"):
            stats = self.gradients.get("end", {}).get(group)
            row[f"{group}_grad_variance"] = stats["variance"] if stats else float("nan")
            row[f"{group}_grad_snr"] = stats["snr"] if stats else float("nan")
            if stats and "bias" in stats:  # (a discrete latent: against the exactly enumerated gradient)
                row[f"{group}_grad_bias"] = stats["bias"]
                row[f"{group}_grad_bias_stderr"] = stats["bias_stderr"]
                row[f"{group}_grad_relative_bias"] = stats["relative_bias"]
        return row


@dataclass
class Comparison:
    """Runs the comparison; ``run()`` writes everything under ``out`` and returns the results."""

    config: Config
    specs: list[dict]
    budget: Budget
    out: Path
    particles: int = 10
    curve_points: int = 10
    curve_samples: int = 100
    grad_draws: int = 100
    grad_batch: int = 64
    snr_ks: tuple[int, ...] = (1, 4, 16, 64)
    progress: bool = True
    log: Callable[[str], None] = print
    results: list[ObjectiveResult] = field(default_factory=list)
    snr_vs_k: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.config.train.kl_warmup_epochs > 0:
            raise ConfigError(
                "compare trains every objective on its own bound, without KL warm-up: set "
                "train.kl_warmup_epochs = 0 (warm-up scales only the ELBO-type objectives, which would "
                "not be equal terms)."
            )
        self.objectives = [OBJECTIVES.build(s, "--objectives") for s in self.specs]
        self._snr_state: tuple[str, dict] | None = None

    # -- running -------------------------------------------------------------------------------

    def run(self, overwrite: bool = False) -> list[ObjectiveResult]:
        prepare_run_dir(self.out, overwrite, "compare", kind="comparison")
        with run_lock(self.out, "compare"):
            return self._run()

    def _run(self) -> list[ObjectiveResult]:
        write_text(self.out / CONFIG, self.config.to_toml())
        self.splits = DATASETS.build(self.config.data, "data").load()  # once, for every objective
        for spec, objective in zip(self.specs, self.objectives):
            self.log(f"== {label(spec)}: {self.budget.describe()}")
            self.results.append(self._train(spec, objective))
        self._snr_against_k()
        self._write()
        return self.results

    def _trainer(self, spec: dict) -> Trainer:
        """The trainer of one objective's run, set up: from the same seed, so the same initial
        parameters and the same sequence of minibatches for every objective."""
        raw = self.config.to_dict()
        raw["train"]["objective"] = OBJECTIVES.build(spec).spec()
        run_dir = self.out / folder_name(spec)
        trainer = Trainer(Config.from_dict(raw), run_dir, progress=False, log=self.log, preloaded=self.splits)
        return trainer.start()

    def _train(self, spec: dict, objective) -> ObjectiveResult:
        """Train one objective for the budget through the trainer's steps (its optimizer, schedules,
        divergence handling and parameter average), measuring along the way."""
        from tqdm.auto import tqdm

        cfg = self.config
        trainer = self._trainer(spec)
        program, objective = trainer.program, trainer.objective
        self.data = trainer.data
        grad_x = trainer.data.train_eval[: self.grad_batch]
        labels = trainer.data.train_eval_labels  # (a conditional program's gradients: given the batch's labels)
        program = program.policy.scoring_view(program, labels[: self.grad_batch] if labels is not None else None)
        result = ObjectiveResult(spec)
        next_curve, next_snapshot = 0, 0
        batches = trainer.batch_stream()
        steps_per_epoch = math.ceil(trainer.data.train.shape[0] / cfg.train.batch_size)
        bar = tqdm(total=self.budget.steps, disable=not self.progress, unit="step", leave=False, dynamic_ncols=True)
        with pyro.validation_enabled(cfg.train.validate):
            while True:
                done = self.budget.fraction(result.steps, result.train_seconds)
                if next_snapshot < len(SNAPSHOTS) and done >= next_snapshot / 2:
                    result.gradients[SNAPSHOTS[next_snapshot]] = {
                        "step": result.steps,
                        **gradient_statistics(program, objective, grad_x, self.grad_draws, seed=cfg.seed,
                                              reference=self._exact_gradient(program, grad_x)),
                    }
                    next_snapshot += 1
                if next_curve <= self.curve_points and done >= next_curve / self.curve_points:
                    with trainer.scored():
                        result.curve.append(self._curve_point(program, trainer.data, result))
                    next_curve += 1
                if done >= 1.0:
                    break
                started = time.perf_counter()  # training time: batch preparation and the SVI step
                index = next(batches)
                try:  # the learning-rate schedule over the budget (train.lr_final: lr * lr_final ** done)
                    loss = trainer.train_step(index, lr=cfg.train.lr * cfg.train.lr_final ** min(1.0, done),
                                              epoch=result.steps / steps_per_epoch)
                except TrainingDiverged as e:
                    raise TrainingDiverged(f"objective {label(spec)}: {e}") from None
                result.train_seconds += time.perf_counter() - started
                result.steps += 1
                bar.update(1)
                if self.progress:
                    bar.set_postfix_str(f"{label(spec)} loss {loss / index.shape[0]:.2f} nats/datapoint", refresh=False)
        bar.close()
        with trainer.scored():
            result.final = self._final(program, trainer.data)
        self._save_run(trainer, result)
        self.log(
            f"   {result.steps} steps in {result.train_seconds:.1f} s; test ELBO {result.final['elbo']:.2f}, "
            f"log p(x) {result.final['log_px']:.2f} nats per datapoint"
        )
        if spec["name"] == "iwae" or self._snr_state is None:  # SNR against K: at the IWAE run's end if any
            self._snr_state = (label(spec), program)
        return result

    def _exact_gradient(self, program, x: torch.Tensor) -> dict | None:
        """The ELBO's true gradient at these parameters where it can be computed (one discrete
        latent of at most ENUMERATION_MAX_STATES states, every state summed), else None."""
        if not enumeration_available(program):
            return None
        return exact_gradient(program, x, max_states=ENUMERATION_MAX_STATES)

    @staticmethod
    def _labels(program, data):
        return program.policy.scored_labels(data.test_labels)

    def _curve_point(self, program, data, result: ObjectiveResult) -> dict:
        ev = evaluate(program, data.test, EvaluationSettings.of(self.config, self.curve_samples, exact_points=0),
                      labels=self._labels(program, data))
        return {"step": result.steps, "train_seconds": result.train_seconds,
                "test_elbo": ev.elbo.mean().item(), "test_log_px": ev.log_px.mean().item()}

    def _final(self, program, data) -> dict:
        settings = EvaluationSettings.of(self.config, exact_points=0)
        enumerable = enumeration_available(program)
        labels = self._labels(program, data)
        ev = evaluate(program, data.test, settings, exact_points=1 if enumerable else 0,  # (a sum: every datapoint)
                      labels=labels)
        iwae = evaluate(program, data.test, settings, samples=self.particles, seed=settings.seed + 1, labels=labels)
        s = ev.summary()
        exact = {"exact_log_px": s["exact"]["log_px"]["mean"], "exact_log_px_stderr": s["exact"]["log_px"]["stderr"]} \
            if "exact" in s else {}
        if "classification" in s:  # a semi-supervised program's classifier
            exact |= {"accuracy": s["classification"]["accuracy"]["mean"],
                      "accuracy_stderr": s["classification"]["accuracy"]["stderr"]}
        return {**exact,
            "elbo": s["elbo"]["mean"],
            "elbo_stderr": s["elbo"]["stderr"],
            "iwae_bound": iwae.log_px.mean().item(),
            "log_px": s["log_px"]["mean"],
            "log_px_stderr": s["log_px"]["stderr"],
            "active_units": s.get("active_units"),  # (where the latent is one continuous vector)
            "latent_dim": s.get("latent_dim"),
        }

    def _save_run(self, trainer: Trainer, result: ObjectiveResult) -> None:
        """Each objective's model as a run folder of its own (``pyro-vae evaluate`` works on it)."""
        prepare_run_dir(trainer.run_dir, overwrite=False, command="compare")
        steps_per_epoch = math.ceil(trainer.data.train.shape[0] / trainer.config.train.batch_size)
        trainer.epoch = result.steps // steps_per_epoch
        trainer.write_checkpoint()

    def _snr_against_k(self) -> None:
        """Encoder-gradient SNR against the number of samples K, at one set of trained parameters:
        IWAE and DReG for a continuous latent; for a discrete one, each compared estimator that
        draws samples, with its bias against the exactly enumerated gradient."""
        where, program = self._snr_state
        grad_x = self.data.train_eval[: self.grad_batch]
        reference = self._exact_gradient(program, grad_x) if program.discrete_latents else None
        if program.discrete_latents:
            specs = {label(s).rsplit(" (", 1)[0]: s for s in self.specs if "num_particles" in s}
        else:
            specs = {"iwae": {"name": "iwae"}, "dreg": {"name": "dreg"}}
        table: dict[str, dict[int, float]] = {name: {} for name in specs}
        bias: dict[str, dict[int, float]] = {name: {} for name in specs}
        with pyro.validation_enabled(self.config.train.validate):
            for name, spec in specs.items():
                for k in self.snr_ks:
                    try:
                        objective = OBJECTIVES.build({**spec, "num_particles": k})
                    except ConfigError:  # (e.g. a leave-one-out baseline at K = 1)
                        continue
                    stats = gradient_statistics(program, objective, grad_x, self.grad_draws, self.config.seed,
                                                reference=reference)
                    table[name][k] = stats["encoder"]["snr"]
                    if reference is not None:
                        bias[name][k] = stats["encoder"]["relative_bias"]
        self.snr_vs_k = {"parameters": f"end of the {where} run", "encoder_snr": table}
        if reference is not None:
            self.snr_vs_k["encoder_relative_bias"] = bias

    # -- reporting -----------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        return [r.row(self.particles, self.config.eval.samples) for r in self.results]

    def markdown(self) -> str:
        k, big = self.particles, self.config.eval.samples
        exact = all("exact_log_px" in r.final for r in self.results)
        accuracy = all("accuracy" in r.final for r in self.results)
        lines = [
            f"| objective | K | steps | train s | ms/step | test ELBO | test IWAE bound (K={k}) | "
            f"test log p(x) (K={big}) | {'exact test log p(x) | ' if exact else ''}"
            f"{'test accuracy | ' if accuracy else ''}active units | encoder grad variance | "
            f"encoder grad SNR | decoder grad variance | decoder grad SNR |",
            "|" + " --- |" * (13 + exact + accuracy),
        ]
        for r in self.results:
            row = r.row(k, big)
            exact_cell = f"{row['test_exact_log_px']:.2f} ± {row['test_exact_log_px_stderr']:.2f} | " if exact else ""
            if accuracy:
                exact_cell += f"{row['test_accuracy']:.4f} ± {row['test_accuracy_stderr']:.4f} | "
            lines.append(
                f"| {row['objective']} | {row['K'] or 'all states'} | {row['steps']} | {row['train_seconds']:.1f} | "
                f"{row['ms_per_step']:.2f} | {row['test_elbo']:.2f} | {row[f'test_iwae_bound_K{k}']:.2f} | "
                f"{row[f'test_log_px_K{big}']:.2f} ± {row['test_log_px_stderr']:.2f} | {exact_cell}"
                f"{_units(row['active_units'], r.final['latent_dim'])} | {row['encoder_grad_variance']:.3g} | "
                f"{row['encoder_grad_snr']:.3f} | {row['decoder_grad_variance']:.3g} | {row['decoder_grad_snr']:.3f} |"
            )
        return "\n".join(lines)

    def gradient_markdown(self) -> str:
        biased = any("bias" in g.get("encoder", {}) for r in self.results for g in r.gradients.values())
        extra = " encoder bias ± s.e. (relative) | decoder bias ± s.e. (relative) |" if biased else ""
        lines = ["| objective | snapshot | encoder variance | encoder SNR | decoder variance | decoder SNR |" + extra,
                 "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if biased else "")]
        for r in self.results:
            for snap in SNAPSHOTS:
                g = r.gradients.get(snap)
                if g:
                    line = (f"| {label(r.spec)} | {snap} (step {g['step']}) | "
                            f"{g['encoder']['variance']:.3g} | {g['encoder']['snr']:.3f} | "
                            f"{g['decoder']['variance']:.3g} | {g['decoder']['snr']:.3f} |")
                    if biased:
                        line += "".join(f" {g[p]['bias']:.3g} ± {g[p]['bias_stderr']:.2g} "
                                        f"({g[p]['relative_bias']:.3f}) |" for p in ("encoder", "decoder"))
                    lines.append(line)
        if biased:
            lines.append("\nbias: |mean of the estimator's draws - the exact gradient| (every latent state summed); "
                         "s.e.: the size that distance has from the draws' noise alone (an unbiased estimator's bias "
                         "is about its s.e.); relative: bias / |exact gradient|.")
        return "\n".join(lines)

    def _write(self) -> None:
        settings = {
            "budget": self.budget.describe(),
            "particles": self.particles,
            "eval_samples": self.config.eval.samples,
            "curve_samples": self.curve_samples,
            "grad_draws": self.grad_draws,
            "grad_batch": self.grad_batch,
            "seed": self.config.seed,
            "units": "nats per datapoint; gradients of the objective per datapoint",
        }
        payload = {
            "settings": settings,
            "rows": self.rows(),
            "objectives": [
                {"objective": label(r.spec), "curve": r.curve, "gradients": r.gradients, "final": r.final}
                for r in self.results
            ],
            "snr_vs_k": self.snr_vs_k,
        }
        write_text(self.out / "results.json", json.dumps(payload, indent=2) + "\n")
        rows = self.rows()
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.out / "results.csv", table.getvalue())
        intro = (f"Budget {self.budget.describe()} per objective, seed {self.config.seed}; "
                 f"nats per datapoint on the test set of {self.config.data['name']}.")
        write_text(self.out / "results.md",
            f"{intro}\n\n{self.markdown()}\n\nGradient statistics ({self.grad_draws} draws on a fixed batch of "
            f"{self.grad_batch}):\n\n{self.gradient_markdown()}\n")
        plots.plot_comparison_curves({label(r.spec): r.curve for r in self.results}, self.out / "curves.png")
        plots.plot_snr_vs_k(self.snr_vs_k, self.out / "snr_vs_k.png")

