"""Compare training objectives on equal terms: same model, initialization, data order and budget.

For each objective, and for each of ``seeds`` initializations, the harness trains the VAE of a
config for the same budget (steps, or seconds of training time) through the trainer's steps. Seed
s changes the initial parameters (those of ``seed + s``) and nothing else: every run reads the
minibatches of ``seed`` in the same order and draws the same noise stream. It measures:

* test ELBO, the test IWAE bound at K (``--particles``), importance-sampled test log p(x) at
  ``final_samples`` (default ``eval.samples``), active units, training seconds and ms per step; each
  of these per test datapoint is kept in the run's folder (``per_datapoint.csv``);
* the **paired** difference of each objective from a reference objective (the first, or
  ``reference``): every run is scored on the same test datapoints, so the difference of the means
  has the standard error of the per-datapoint differences, sd_i(v_i - r_i) / sqrt(n), far smaller
  than either mean's own; with several seeds, the mean and spread of that difference over seeds
  beside the within-seed paired error, and which of the two dominates;
* along the way, at evenly spaced points, test ELBO and log p(x) (``curve_samples`` samples);
* gradient statistics (in the first seed's runs) at fixed parameter snapshots (start, middle, end
  of training): ``grad_draws``
  independent gradient estimates on one fixed minibatch, summarized separately for the encoder
  and the decoder as the variance (trace of the covariance) and the signal-to-noise ratio
  |E[g]| / std(g) (Rainforth et al. 2018); an estimator without noise (the exact sum over
  states) has SNR infinity, said as "exact";
* the encoder-gradient SNR against K for IWAE and DReG, at the final parameters of the IWAE run
  of the first seed (or of the first run, if there is none).

With ``variants`` (``--variants``), each objective is trained once per model variant: a named list
of config overrides (another prior, likelihood, guide, network or learning rate), every variant on
the same data, test datapoints and data order, so that their log p(x) differ only by the model and
pair like the objectives'; a variant whose prepared test data differ (binarized against grey pixels)
is refused, since its log p(x) would be of other data.

Before training, a short calibration (a few steps, evaluations and gradient draws of each
objective) gives an estimate of the whole run's time, training plus every measurement, which is
announced. The measuring settings not given explicitly are scaled down, where needed, so that the
measuring adds at most ``MEASURE_SHARE`` of the training time, or, with ``total``, so that the whole
run fits in ``total`` seconds; a run whose estimate still exceeds ``total`` is refused unless
``confirmed``. Everything but the timings is deterministic for a seed on CPU with a step budget.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyro
import torch

from . import plots
from .config import DATASETS, OBJECTIVES, Config, apply_overrides, parse_value
from .errors import ConfigError, TrainingDiverged
from .evaluation import EvaluationSettings, evaluate
from .files import write_text
from .exact import ENUMERATION_MAX_STATES, enumeration_available
from .metrics import exact_gradient, gradient_statistics
from .runs import CONFIG, _replaceable, prepare_run_dir, run_lock
from .training import Trainer, check_last_step

SNAPSHOTS = ("start", "middle", "end")


@dataclass(frozen=True)
class Budget:
    """How long each objective trains: a number of steps, or seconds of training time."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str, flag: str = "--budget") -> "Budget":
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(steps?|s|sec|seconds?|m|min|minutes?)?\s*", text)
        if not m:
            raise ConfigError(f"{flag} {text!r}: give a number of steps (2000, 2000steps) or a time (90s, 5min).")
        value, unit = float(m.group(1)), (m.group(2) or "steps")
        if unit.startswith("step"):
            if value != int(value) or value < 1:
                raise ConfigError(f"{flag} {text!r}: the number of steps must be a whole number >= 1.")
            return cls(steps=int(value))
        seconds = value * 60 if unit.startswith("m") else value
        if seconds <= 0:
            raise ConfigError(f"{flag} {text!r} must be positive.")
        return cls(seconds=seconds)

    def describe(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.seconds:g} s of training"

    def fraction(self, step: int, seconds: float) -> float:
        return step / self.steps if self.steps is not None else seconds / self.seconds  # type: ignore[operator]


_ITEM = re.compile(r"^(?P<name>[\w-]+)(?:\((?P<options>[^()]*)\))?(?::(?P<k>\d+))?$")


def parse_objectives(text: str, particles: int) -> list[dict]:
    """``"elbo,iwae,dreg:64,score-function(baseline=none; decay=0.5):4"`` -> objective tables:
    NAME, options in parentheses (``key=value`` separated by ``;``, values in TOML syntax), and
    after a colon the samples per datapoint; an objective that draws samples and names no K gets
    ``particles``."""
    specs = []
    for item in _split_top(text, ","):  # (commas inside an item's parentheses kept with it)
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


VARIED = ("model.", "train.")  # what a variant may set (data, eval and seed alike for every variant)


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets, braces, parentheses and quotes; items stripped."""
    items, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        else:
            depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(char, 0)
        if char == sep and depth == 0 and not quote:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [t for t in [*items, current.strip()] if t]


def parse_variants(text: str | None, config: Config) -> list[dict]:
    """``"ln: model.prior=logistic-normal | dir: model.prior=dirichlet; model.guide=dirichlet"`` -> the
    model variants each objective is trained with: ``[{"variant": "ln", "set": [...]}, ...]``. Variants
    are separated by ``|``; each is an optional ``NAME:`` and ``KEY=VALUE`` overrides separated by ``;``,
    as ``--set`` takes them, applied to ``config`` in order. A variant may set ``model.*`` and
    ``train.*`` (not ``train.objective``: that is ``--objectives``); every config is checked now.
    No text: one variant, the config as it is (``[]``: no variants)."""
    if not text or not text.strip():
        return []
    variants = []
    for part in _split_top(text, "|"):
        head, colon, rest = part.partition(":")
        named = colon and "=" not in head
        name, body = (head.strip(), rest) if named else ("", part)
        overrides = _split_top(body, ";")
        if not overrides:
            raise ConfigError(f"--variants: {part!r} sets nothing; give KEY=VALUE overrides separated by ';', e.g. "
                              f"'dirichlet: model.prior=dirichlet; model.guide=dirichlet'.")
        for item in overrides:
            key = item.partition("=")[0].strip()
            if not key.startswith(VARIED) or key.startswith("train.objective"):
                why = ("that is --objectives" if key.startswith("train.objective") else
                       "every variant is trained and scored on the same data, evaluation and seed (--seeds varies "
                       "the initialization)")
                raise ConfigError(f"--variants: {item!r} sets {key!r}: a variant may set model.* and train.* only "
                                  f"({why}).")
        try:
            Config.from_dict(apply_overrides(config.to_dict(), overrides))
        except ConfigError as e:
            raise ConfigError(f"--variants {name or part!r}: {e}") from None
        variants.append({"variant": name or "; ".join(overrides), "set": overrides})
    names = [v["variant"] for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"--variants names a variant twice: {', '.join(names)}; give each its own NAME:.")
    return variants


def crossed(specs: list[dict], variants: list[dict]) -> list[dict]:
    """Every objective under every variant (variant by variant); the objectives alone without variants."""
    return [{**spec, "variant": v} for v in variants for spec in specs] if variants else specs


def objective_of(spec: dict) -> dict:
    """The objective's own table (a compared spec without its model variant)."""
    return {k: v for k, v in spec.items() if k != "variant"}


def _options(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in ("name", "num_particles", "variant")}


def _units(active: int | None, dim: int | None) -> str:
    return "-" if active is None else f"{active}/{dim}"


def title(spec: dict) -> str:
    """An objective's name with its options, as --objectives takes it: enumerate(classifier_weight=50);
    under a model variant, the variant's name first: ``dirichlet / elbo``."""
    options = "; ".join(f"{k}={v}" for k, v in _options(spec).items())
    name = f"{spec['name']}({options})" if options else spec["name"]
    return f"{spec['variant']['variant']} / {name}" if "variant" in spec else name


def label(spec: dict) -> str:
    name = title(spec)
    return f"{name} (K={spec['num_particles']})" if "num_particles" in spec else f"{name} (every state)"


def folder_name(spec: dict) -> str:
    options = "".join(f"-{k}-{v}" for k, v in _options(spec).items())
    variant = f"{spec['variant']['variant']}-" if "variant" in spec else ""
    name = re.sub(r"[^\w.-]+", "-", f"{variant}{spec['name']}{options}").strip("-")
    return f"{name}-K{spec['num_particles']}" if "num_particles" in spec else name


MEASURE_SHARE = 0.5  # the default measuring adds at most this share of the training time
#: the announced upper figure is the estimate times 1 + ESTIMATE_MARGIN: whole runs measured on this project's
#: 2-core machines took 0.92 to 1.10 times the estimate (benchmarks/compare_budget.py, compare's 3-seed runs)
ESTIMATE_MARGIN = 0.15
DEFAULTS = {"curve_points": 10, "curve_samples": 100, "grad_draws": 100, "grad_batch": 64, "snr_ks": (1, 4, 16, 64)}
FLOORS = {"curve_points": 2, "curve_samples": 10, "grad_draws": 10, "final_samples": 50}  # scaled down to no less
KNOB_WORDS = {"curve_points": "curve points", "curve_samples": "curve K", "grad_draws": "gradient draws",
              "final_samples": "final K", "snr_ks": "SNR-against-K values"}


def parse_total(text: str) -> float:
    """``--total``: the whole run's time in seconds (a time, not steps)."""
    total = Budget.parse(text, "--total")
    if total.seconds is None:
        raise ConfigError(f"--total {text!r}: give the whole run's time, e.g. --total 15min or --total 600s.")
    return total.seconds


@dataclass(frozen=True)
class Measuring:
    """What compare measures besides training, and how much: test curves at ``curve_points`` + 1
    points with K = ``curve_samples``; ``grad_draws`` gradient draws on ``grad_batch`` training
    datapoints at three snapshots; the encoder SNR at each K of ``snr_ks``; the final log p(x)
    at K = ``final_samples``."""

    curve_points: int
    curve_samples: int
    grad_draws: int
    grad_batch: int
    snr_ks: tuple[int, ...]
    final_samples: int

    def scaled(self, s: float, fixed: frozenset[str]) -> "Measuring":
        """The settings with each one not in ``fixed`` scaled down by ``s`` <= 1, not below its floor:
        the draws along the way (curve K, gradient draws) by s, the curve's points and the final K,
        the headline number, by sqrt(s)."""
        if s >= 1:
            return self
        out = {}
        for name, floor in FLOORS.items():
            value, by = getattr(self, name), (math.sqrt(s) if name in ("curve_points", "final_samples") else s)
            out[name] = value if name in fixed else max(min(value, floor), round(value * by))
        ks = self.snr_ks
        if "snr_ks" not in fixed and len(ks) > 2:
            ks = tuple(k for i, k in enumerate(ks) if i < 2 or k <= max(ks) * s)
        return Measuring(grad_batch=self.grad_batch, snr_ks=ks, **out)

    def changes(self, other: "Measuring") -> str:
        """What ``other`` measures less than this: "curve K 100 -> 40, ..." ("" if nothing)."""
        said = []
        for name, word in KNOB_WORDS.items():
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                show = (lambda v: ",".join(map(str, v))) if name == "snr_ks" else str
                said.append(f"{word} {show(a)} -> {show(b)}")
        return ", ".join(said)


@dataclass
class Costs:
    """Seconds per unit of each kind of work, from a short calibration on this machine."""

    build: float  # setting one run up (program, data preparation, optimizer)
    step: dict[str, float]  # one training step, per objective
    draw: dict[str, tuple[float, float]]  # (a call, one draw more) of gradient statistics, per objective
    pair: float  # one (test datapoint, importance sample) of an evaluation
    point: float  # one test datapoint's evaluation besides its samples (ELBO terms, posterior mean)
    call: float  # one evaluation besides its datapoints (set-up, summaries)
    exact_point: float  # one test datapoint's exact log p(x) (every state summed; 0 where none)
    exact_gradient: float  # one exact gradient on the gradient batch (0 where none)
    snr_draw: dict[str, tuple[float, float, float]]  # (a call, a + b K a draw at K), per SNR-against-K estimator
    writing: float  # tables, pictures, checkpoints
    disentangling: float = 0.0  # a run's disentanglement scores and traversals (data with known factors; else 0)
    # each run's evaluation costs against the first's, (per sample, per datapoint besides its samples): model
    # variants (another likelihood or network) evaluate at their own cost; objectives alone share the first's
    evaluation_scale: dict[str, tuple[float, float]] = field(default_factory=dict)


def estimate(costs: Costs, m: Measuring, *, keys: list[str], seeds: int, budget: Budget, n_test: int,
             particles: int) -> dict[str, float]:
    """The seconds of each phase of a comparison (setup, training, curves, gradients, final, snr,
    writing) under the calibrated ``costs``; ``"measuring"`` curves to snr, ``"total"`` all."""
    per_run_train = {k: (budget.steps * costs.step[k] if budget.steps is not None else budget.seconds) for k in keys}

    def evaluation(samples: int, key: str) -> float:
        pair, point = costs.evaluation_scale.get(key, (1.0, 1.0))
        return costs.call + n_test * (samples * costs.pair * pair + costs.point * point)

    phases = {
        "setup": len(keys) * (2 * seeds - 1) * costs.build,  # (seed s > 0: a trainer of s first, its parameters copied)
        "training": seeds * sum(per_run_train.values()),
        "curves": seeds * (sum(m.curve_points * evaluation(m.curve_samples, k) for k in keys)
                           + evaluation(m.curve_samples, keys[0])),  # (step 0: once a seed)
        "gradients": sum(len(SNAPSHOTS) * (costs.draw[k][0] + m.grad_draws * costs.draw[k][1] + costs.exact_gradient)
                         for k in keys),
        "final": seeds * sum(evaluation(m.final_samples, k) + evaluation(particles, k) + n_test * costs.exact_point
                             + costs.disentangling for k in keys),
        "snr": sum(call + m.grad_draws * (a + b * k) for call, a, b in costs.snr_draw.values() for k in m.snr_ks)
        + costs.exact_gradient,
        "writing": costs.writing,
    }
    phases["measuring"] = sum(phases[k] for k in ("curves", "gradients", "final", "snr"))
    phases["total"] = phases["setup"] + phases["training"] + phases["measuring"] + phases["writing"]
    return phases


def paired_difference(values, reference) -> tuple[float, float]:
    """The mean over datapoints of v_i - r_i and its paired standard error sd_i(v_i - r_i) / sqrt(n)
    (sd with n - 1): the error of a difference of two means taken on the same datapoints."""
    d = torch.as_tensor(values, dtype=torch.float64) - torch.as_tensor(reference, dtype=torch.float64)
    return d.mean().item(), (d.std().item() / math.sqrt(len(d)) if len(d) > 1 else float("nan"))


def over_seeds(per_seed: list[tuple[float, float]]) -> dict:
    """Per-seed paired differences (difference, paired s.e.) -> their mean, the within-seed paired
    s.e. (root mean square over seeds), the standard deviation over seeds, the standard error of
    the mean (the larger of the two spreads, over sqrt(seeds); the paired s.e. at one seed), whether
    the mean is beyond two of it, and which spread dominates (at several seeds)."""
    diffs = [d for d, _ in per_seed]
    n = len(diffs)
    mean = sum(diffs) / n
    paired = math.sqrt(sum(se * se for _, se in per_seed) / n)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    stderr = paired if n == 1 else max(sd, paired) / math.sqrt(n)
    return {"mean": mean, "paired_stderr": paired, "seed_sd": sd, "stderr": stderr,
            "beyond_two_stderr": abs(mean) > 2 * stderr if stderr > 0 else mean != 0,
            "dominant": None if n == 1 else ("seeds" if sd > paired else "datapoints"),
            "per_seed": [{"difference": d, "paired_stderr": se} for d, se in per_seed]}


def snr_of(stats: dict | None) -> float:
    """The SNR of a parameter group's gradient statistics; infinite for an estimator whose draws
    do not vary (the exact sum over states: |E g| / 0), not the 0/0 of its coordinates."""
    if not stats:
        return float("nan")
    return math.inf if stats["variance"] == 0 else stats["snr"]


def show_snr(value: float) -> str:
    return "exact (∞)" if value == math.inf else f"{value:.3f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sd(values: list[float]) -> float:
    n = len(values)
    return math.sqrt(sum((v - _mean(values)) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")


@dataclass
class ObjectiveResult:
    spec: dict
    key: str = ""  # the objective's label, unique within the comparison
    seed: int = 0  # the initialization's seed
    steps: int = 0
    train_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)
    gradients: dict[str, dict] = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # per test datapoint

    def row(self, iwae_k: int, final_samples: int) -> dict:
        f = self.final
        row = {
            "objective": title(self.spec),
            "K": self.spec.get("num_particles"),  # (None: the objective sums over every state)
            "seed": self.seed,
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
        for name in TOPICS:  # (a topic model)
            if name in f:
                row[f"test_{name}"] = f[name]
        for name in DISENTANGLEMENT:  # (data with known factors)
            if name in f:
                row[name], row[name + "_stderr"] = f[name], f[name + "_stderr"]
        if "exact_log_px" in f:  # (a discrete latent: every state summed)
            row["test_exact_log_px"], row["test_exact_log_px_stderr"] = f["exact_log_px"], f["exact_log_px_stderr"]
        for group in ("encoder", "decoder"):
            stats = self.gradients.get("end", {}).get(group)
            row[f"{group}_grad_variance"] = stats["variance"] if stats else float("nan")
            row[f"{group}_grad_snr"] = snr_of(stats)
            if stats and "bias" in stats:  # (a discrete latent: against the exactly enumerated gradient)
                row[f"{group}_grad_bias"] = stats["bias"]
                row[f"{group}_grad_bias_stderr"] = stats["bias_stderr"]
                row[f"{group}_grad_relative_bias"] = stats["relative_bias"]
        return row


@dataclass
class Comparison:
    """Runs the comparison; ``run()`` writes everything under ``out`` and returns the results.

    The measuring settings (``curve_points`` ... ``final_samples``) left None take their defaults
    (``DEFAULTS``; ``final_samples``: ``eval.samples``) and may be scaled down to fit the time;
    those given are kept as given. ``seeds``: initializations per objective; ``reference``: the
    objective the paired differences are taken from (default the first); ``total``: seconds the
    whole run may take; ``confirmed``: run even where the estimate exceeds ``total``; ``variants``
    (:func:`parse_variants`): the model variants, each objective trained under each."""

    config: Config
    specs: list[dict]
    budget: Budget
    out: Path
    particles: int = 10
    curve_points: int | None = None
    curve_samples: int | None = None
    grad_draws: int | None = None
    grad_batch: int | None = None
    snr_ks: tuple[int, ...] | None = None
    final_samples: int | None = None
    seeds: int = 1
    reference: str | None = None
    total: float | None = None
    confirmed: bool = False
    variants: list[dict] = field(default_factory=list)
    progress: bool = True
    log: Callable[[str], None] = print
    results: list[ObjectiveResult] = field(default_factory=list)
    snr_vs_k: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for v in [{"variant": "", "set": []}, *self.variants]:
            if Config.from_dict(apply_overrides(self.config.to_dict(), v["set"])).train.kl_warmup_epochs > 0:
                raise ConfigError(
                    f"compare trains every objective on its own bound, without KL warm-up: set "
                    f"train.kl_warmup_epochs = 0{' in variant ' + repr(v['variant']) if v['set'] else ''} (warm-up "
                    f"scales only the ELBO-type objectives, which would not be equal terms).")
        if self.seeds < 1:
            raise ConfigError(f"--seeds {self.seeds}: give a whole number >= 1.")
        self.specs = crossed(self.specs, self.variants)
        self.objectives = [OBJECTIVES.build(objective_of(s), "--objectives") for s in self.specs]
        self.keys, self.folders = _unique([label(s) for s in self.specs]), _unique([folder_name(s) for s in self.specs], "-")
        self.ref = _reference(self.reference, self.specs, self.keys)
        given = {"final_samples": self.final_samples, **{k: getattr(self, k) for k in DEFAULTS}}
        self.fixed = frozenset(k for k, v in given.items() if v is not None)
        self.requested = Measuring(**{**DEFAULTS, "final_samples": self.config.eval.samples,
                                      **{k: (tuple(v) if k == "snr_ks" else v) for k, v in given.items() if v is not None}})
        self.measuring, self.scaled_note, self.estimated = self.requested, "", {}
        self.timings: dict[str, float] = {}
        self._snr_state: tuple[str, object] | None = None
        self._starts: dict[tuple, dict] = {}  # (seed offset, variant) -> the curve's step-0 point

    # -- running -------------------------------------------------------------------------------

    def run(self, overwrite: bool = False) -> list[ObjectiveResult]:
        started = time.perf_counter()
        _replaceable(self.out, overwrite, "comparison")  # (refused before the calibration, nothing made)
        self.splits = DATASETS.build(self.config.data, "data").load()  # once, for every objective
        self.plan()
        prepare_run_dir(self.out, overwrite, "compare", kind="comparison")
        with run_lock(self.out, "compare"):
            write_text(self.out / CONFIG, self.config.to_toml())
            for offset in range(self.seeds):
                for spec, key, folder in zip(self.specs, self.keys, self.folders):
                    seed = f", initialization of seed {self.config.seed + offset}" if self.seeds > 1 else ""
                    self.log(f"== {key}: {self.budget.describe()}{seed}")
                    folder = f"{folder}-seed{self.config.seed + offset}" if self.seeds > 1 else folder
                    self.results.append(self._train(spec, key, folder, offset))
            with self._timed("snr"):
                snr_against_k(self)
            self._write(started)
        return self.results

    @contextmanager
    def _timed(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def plan(self) -> dict[str, float]:
        """Calibrate, fit the measuring to the time (scaling down the settings not given), announce
        the estimate of the whole run; refuse one that exceeds ``total`` unless ``confirmed``."""
        with self._timed("calibration"):
            self.costs = calibrate(self)
        shape = dict(keys=self.keys, seeds=self.seeds, budget=self.budget, n_test=self.splits.test.shape[0],
                     particles=self.particles)

        def fits(s: float) -> bool:
            phases = estimate(self.costs, self.requested.scaled(s, self.fixed), **shape)
            return (phases["total"] * (1 + ESTIMATE_MARGIN) + self.timings["calibration"] <= self.total
                    if self.total is not None else phases["measuring"] <= MEASURE_SHARE * phases["training"])

        s, low = 1.0, 1e-3
        if not fits(1.0):
            s, high = low, 1.0
            for _ in range(30):  # the largest scale that fits (the estimate grows with it)
                middle = (s + high) / 2
                s, high = (middle, high) if fits(middle) else (s, middle)
        self.measuring = self.requested.scaled(s, self.fixed)
        self.estimated = estimate(self.costs, self.measuring, **shape)
        self.estimated["calibration"] = self.timings["calibration"]  # (spent already: part of the whole run)
        self.estimated["total"] += self.estimated["calibration"]
        self.estimated["limit"] = self.estimated["calibration"] + (self.estimated["total"] - self.estimated["calibration"]) \
            * (1 + ESTIMATE_MARGIN)
        within = f"--total {self.total:g} s" if self.total is not None else \
            f"{MEASURE_SHARE:.0%} on top of the training"
        changes = self.requested.changes(self.measuring)
        self.scaled_note = f"measuring scaled down to fit {within}: {changes}" if changes else ""
        self.log(describe_estimate(self.estimated, self.timings["calibration"]))
        if self.scaled_note:
            self.log(self.scaled_note)
        if self.total is not None and self.estimated["limit"] > self.total and not self.confirmed:
            raise ConfigError(
                f"compare: the estimate, {self.estimated['total']:.0f} s (up to {self.estimated['limit']:.0f} s), "
                f"exceeds --total {self.total:g} s even with "
                f"the measuring at its least (or as given); confirm with --yes to run it anyway, or give a smaller "
                f"--budget, fewer --seeds or fewer --objectives.")
        return self.estimated

    def _trainer(self, spec: dict, offset: int, folder: str, quiet: bool = False) -> Trainer:
        """The trainer of one objective's run, set up from ``config.seed`` (its data order and noise,
        the same for every objective and seed), with the initial parameters of seed
        ``config.seed + offset``: a trainer of that seed is set up first and its parameters copied."""
        raw = apply_overrides(self.config.to_dict(), spec["variant"]["set"]) if "variant" in spec else self.config.to_dict()
        raw["train"]["objective"] = OBJECTIVES.build(objective_of(spec)).spec()
        run_dir = self.out / folder
        initial = None
        if offset:
            other = Trainer(Config.from_dict({**raw, "seed": self.config.seed + offset}), run_dir, progress=False,
                            log=lambda s: None, preloaded=self.splits).start()
            own = other.objective.module()
            initial = (other.program.module.state_dict(), own.state_dict() if own is not None else None)
        trainer = Trainer(Config.from_dict(raw), run_dir, progress=False, log=(lambda s: None) if quiet else self.log,
                          preloaded=self.splits).start()
        if initial is not None:
            trainer.program.module.load_state_dict(initial[0])
            if initial[1] is not None:
                trainer.objective.module().load_state_dict(initial[1])
            if trainer.average is not None:  # (the parameter average starts at the initial parameters)
                trainer.average.load(initial[0])
        return trainer

    def gradient_view(self, trainer: Trainer):
        """The program as the gradient statistics see it (a conditional program: given the gradient
        batch's labels), and that batch."""
        grad_x = trainer.data.train_eval[: self.measuring.grad_batch]
        labels = trainer.data.train_eval_labels
        program = trainer.program
        return program.policy.scoring_view(program, labels[: len(grad_x)] if labels is not None else None), grad_x

    def _train(self, spec: dict, key: str, folder: str, offset: int) -> ObjectiveResult:
        """Train one objective for the budget through the trainer's steps (its optimizer, schedules,
        divergence handling and parameter average), measuring along the way."""
        from tqdm.auto import tqdm

        cfg, m = self.config, self.measuring
        with self._timed("setup"):
            trainer = self._trainer(spec, offset, folder, quiet=offset > 0)
        program, grad_x = self.gradient_view(trainer)
        self.data = trainer.data
        result = ObjectiveResult(spec, key, cfg.seed + offset)
        next_curve, next_snapshot = 0, 0
        batches, lr = trainer.batch_stream(), trainer.config.train  # (a variant may set train.*)
        steps_per_epoch = math.ceil(trainer.data.train.shape[0] / lr.batch_size)
        bar = tqdm(total=self.budget.steps, disable=not self.progress, unit="step", leave=False, dynamic_ncols=True)
        with pyro.validation_enabled(cfg.train.validate):
            while True:
                done = self.budget.fraction(result.steps, result.train_seconds)
                if offset == 0 and next_snapshot < len(SNAPSHOTS) and done >= next_snapshot / 2:  # (first seed)
                    with self._timed("gradients"):
                        result.gradients[SNAPSHOTS[next_snapshot]] = {
                            "step": result.steps,
                            **gradient_statistics(program, trainer.objective, grad_x, m.grad_draws, seed=cfg.seed,
                                                  reference=self._exact_gradient(program, grad_x))}
                    next_snapshot += 1
                if next_curve <= m.curve_points and done >= next_curve / m.curve_points:
                    with self._timed("curves"), trainer.scored():
                        result.curve.append(self._curve_point(program, trainer.data, result, offset))
                    next_curve += 1
                if done >= 1.0:
                    break
                started = time.perf_counter()  # training time: batch preparation and the SVI step
                index = next(batches)
                try:  # the learning-rate schedule over the budget (train.lr_final: lr * lr_final ** done)
                    loss = trainer.train_step(index, lr=lr.lr * lr.lr_final ** min(1.0, done),
                                              epoch=result.steps / steps_per_epoch)
                except TrainingDiverged as e:
                    raise TrainingDiverged(f"objective {key}: {e}") from None
                result.train_seconds += time.perf_counter() - started
                result.steps += 1
                bar.update(1)
                if self.progress:
                    bar.set_postfix_str(f"{key} loss {loss / index.shape[0]:.2f} nats/datapoint", refresh=False)
        bar.close()
        check_last_step(program.module, f"objective {key}")
        self.timings["training"] = self.timings.get("training", 0.0) + result.train_seconds
        with self._timed("final"), trainer.scored():
            result.final, result.values = self._final(program, trainer.data)
        with self._timed("writing"):
            save_run(self, trainer, result)
        if trainer.data.splits.factors is not None:  # data with known factors: the disentanglement scores
            with self._timed("final"):
                result.final |= disentanglement_of(trainer.run_dir, key)
        self.log(f"   {result.steps} steps in {result.train_seconds:.1f} s; test ELBO {result.final['elbo']:.2f}, "
                 f"log p(x) {result.final['log_px']:.2f} nats per datapoint")
        if offset == 0 and (spec["name"] == "iwae" or self._snr_state is None):  # SNR against K: the IWAE run's end
            self._snr_state = (key, program)
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

    def _curve_point(self, program, data, result: ObjectiveResult, offset: int) -> dict:
        """Test ELBO and log p(x) now; at step 0 the seed's first objective's (the same parameters, the
        same seeded evaluation: computed once a seed)."""
        start = (offset, result.spec["variant"]["variant"] if "variant" in result.spec else None)
        if result.steps == 0 and start in self._starts:
            return dict(self._starts[start])
        settings = EvaluationSettings.of(self.config, self.measuring.curve_samples, exact_points=0)
        ev = evaluate(program, data.test, settings, labels=self._labels(program, data))
        point = {"step": result.steps, "train_seconds": result.train_seconds,
                 "test_elbo": ev.elbo.mean().item(), "test_log_px": ev.log_px.mean().item()}
        if result.steps == 0:
            self._starts[start] = point
        return point

    def _final(self, program, data) -> tuple[dict, dict[str, torch.Tensor]]:
        """The final scores (means and standard errors) and the per-datapoint values behind them."""
        from .trained import topic_scores

        settings = EvaluationSettings.of(self.config, self.measuring.final_samples, exact_points=0)
        enumerable = enumeration_available(program)
        labels = self._labels(program, data)
        ev = evaluate(program, data.test, settings, exact_points=1 if enumerable else 0,  # (a sum: every datapoint)
                      labels=labels)
        iwae = evaluate(program, data.test, settings, samples=self.particles, seed=settings.seed + 1, labels=labels)
        s = ev.summary()
        values = {"elbo": ev.elbo, "iwae_bound": iwae.log_px, "log_px": ev.log_px}
        exact = {}
        if "exact" in s:
            exact = {"exact_log_px": s["exact"]["log_px"]["mean"], "exact_log_px_stderr": s["exact"]["log_px"]["stderr"]}
            if ev.exact.n == ev.n:
                values["exact_log_px"] = ev.exact.log_px
        if "classification" in s:  # a semi-supervised program's classifier
            exact |= {"accuracy": s["classification"]["accuracy"]["mean"],
                      "accuracy_stderr": s["classification"]["accuracy"]["stderr"]}
        topic = topic_scores(program, data.splits, ev.log_px, settings.samples)
        if topic is not None:  # a topic model: its topics' coherence, the test documents' perplexity
            exact |= {"npmi": topic["npmi"], "perplexity": topic["perplexity"],
                      "unigram_perplexity": topic["unigram_perplexity"]}
        return {**exact,
            "elbo": s["elbo"]["mean"],
            "elbo_stderr": s["elbo"]["stderr"],
            "iwae_bound": iwae.log_px.mean().item(),
            "log_px": s["log_px"]["mean"],
            "log_px_stderr": s["log_px"]["stderr"],
            "active_units": s.get("active_units"),  # (where the latent is one continuous vector)
            "latent_dim": s.get("latent_dim"),
        }, {k: v.detach().double().cpu() for k, v in values.items()}

    # -- reporting (the tables: module functions below) ------------------------------------------

    def rows(self) -> list[dict]:
        return [r.row(self.particles, self.measuring.final_samples) for r in self.results]

    def paired(self) -> dict[str, dict[str, dict]]:
        return paired_table(self.results, self.keys, self.ref)

    def markdown(self) -> str:
        return results_markdown(self)

    def paired_markdown(self) -> str:
        return differences_markdown(self)

    def gradient_markdown(self) -> str:
        return gradients_markdown(self)

    def _write(self, started: float) -> None:
        with self._timed("writing"):
            plots.plot_comparison_curves(curves_by_objective(self.results), self.out / "curves.png")
            plots.plot_differences(self.paired(), self.ref, self.out / "differences.png")
            plots.plot_snr_vs_k(self.snr_vs_k, self.out / "snr_vs_k.png")
            if all("mig" in r.final for r in self.results):  # (data with known factors: the price of disentangling)
                plots.plot_price({_name(self, key): [(r.final["mig"], r.final["log_px"]) for r in rs]
                                  for key, rs in _by_key(self).items()}, self.out / "price.png")
            self.timings["total"] = time.perf_counter() - started  # (the texts below take milliseconds)
            write_tables(self)


PER_DATAPOINT = "per_datapoint.csv"  # in each objective's run folder: its test values, one row per datapoint
METRICS = {"log_px": "test log p(x)", "elbo": "test ELBO", "iwae_bound": "test IWAE bound",
           "exact_log_px": "exact test log p(x)"}


def snr_against_k(c: "Comparison") -> None:
    """Encoder-gradient SNR against the number of samples K, at one set of trained parameters:
    IWAE and DReG for a continuous latent; for a discrete one, each compared estimator that
    draws samples, with its bias against the exactly enumerated gradient."""
    where, program = c._snr_state
    grad_x = c.data.train_eval[: c.measuring.grad_batch]
    reference = c._exact_gradient(program, grad_x) if program.discrete_latents else None
    specs = snr_specs(c.specs, program)
    table: dict[str, dict[int, float]] = {name: {} for name in specs}
    bias: dict[str, dict[int, float]] = {name: {} for name in specs}
    with pyro.validation_enabled(c.config.train.validate):
        for name, spec in specs.items():
            for k in c.measuring.snr_ks:
                try:
                    objective = OBJECTIVES.build({**objective_of(spec), "num_particles": k})
                except ConfigError:  # (e.g. a leave-one-out baseline at K = 1)
                    continue
                stats = gradient_statistics(program, objective, grad_x, c.measuring.grad_draws,
                                            c.config.seed, reference=reference)
                table[name][k] = snr_of(stats["encoder"])
                if reference is not None:
                    bias[name][k] = stats["encoder"]["relative_bias"]
    c.snr_vs_k = {"parameters": f"end of the {where} run", "encoder_snr": table}
    if reference is not None:
        c.snr_vs_k["encoder_relative_bias"] = bias


#: a topic model's scores compare's table shows: NPMI of the 10 top words (test documents), per-word perplexity
TOPICS = {"npmi": "NPMI (10 top words)", "perplexity": "test perplexity"}
#: the disentanglement scores compare's table shows for data with known factors (disentanglement.py)
DISENTANGLEMENT = {"mig": "MIG", "dci_disentanglement": "DCI dis.", "sap": "SAP", "factorvae": "FactorVAE score"}
COMPARE_FACTORVAE_VOTES = {"train_votes": 200, "eval_votes": 100, "variance_samples": 2000}
DISENTANGLEMENT_RESAMPLES = 5  #: bootstrap resamples behind compare's standard errors of MIG, DCI and SAP


def disentanglement_of(run_dir: Path, title: str = "") -> dict:
    """MIG, DCI's disentanglement, SAP and the FactorVAE score of a saved run (its test set's posterior
    means against their factors), each with its standard error; the FactorVAE score from 200 training
    and 100 evaluation votes (a quarter of ``evaluate --disentanglement``'s: its binomial standard
    error says so) and MIG, DCI and SAP's standard errors from ``DISENTANGLEMENT_RESAMPLES`` bootstrap
    resamples, since compare scores every objective at every seed. Draws the run's latent traversals
    (``traversals.png`` in its folder: the first test input, ranges from the first 256)."""
    from .disentanglement import disentanglement_scores
    from .trained import load_run

    run = load_run(run_dir, trust_code=True)
    scores = disentanglement_scores(run, resamples=DISENTANGLEMENT_RESAMPLES, factorvae_options=COMPARE_FACTORVAE_VOTES)
    test = run.prepared.test
    try:
        plots.save_traversals(run.program, test[:1], test[:256], run_dir / "traversals.png", title or run_dir.name,
                              seed=run.config.seed)
    except ValueError:  # (a latent that is not one continuous vector: no traversals)
        pass
    return {k: scores[k] for name in DISENTANGLEMENT for k in (name, name + "_stderr") if scores.get(k) is not None}


def save_run(c: "Comparison", trainer: Trainer, result: ObjectiveResult) -> None:
    """Each objective's model as a run folder of its own (``pyro-vae evaluate`` works on it), with
    its per-datapoint test values and the seed of its initialization."""
    prepare_run_dir(trainer.run_dir, overwrite=False, command="compare")
    steps_per_epoch = math.ceil(trainer.data.train.shape[0] / trainer.config.train.batch_size)
    trainer.epoch = result.steps // steps_per_epoch
    trainer.write_checkpoint()
    m = c.measuring
    write_text(trainer.run_dir / PER_DATAPOINT, per_datapoint_csv(result.values, c.particles, m.final_samples))
    write_text(trainer.run_dir / "compare.json", json.dumps({
        "objective": result.key, "initialization_seed": result.seed, "data_order_and_noise_seed": c.config.seed,
        "note": "compare copied the initial parameters of initialization_seed into a run of seed "
                "data_order_and_noise_seed (config.toml): its minibatches and noise, the same for every run"},
        indent=2) + "\n")


def _unique(names: list[str], joiner: str = " #") -> list[str]:
    """Names made unique in order: a repeated one gets #2, #3 ... (the same objective compared twice)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}{joiner}{seen[name]}")
    return out


def _reference(given: str | None, specs: list[dict], keys: list[str]) -> str:
    """The key of the reference objective: the first, or the one ``given`` names (its label, its
    name with options, or its bare name where only one has it)."""
    if given is None:
        return keys[0]
    for spec, key in zip(specs, keys):
        if given in (key, title(spec), folder_name(spec)):
            return key
    named = [key for spec, key in zip(specs, keys) if given in (spec["name"], spec.get("variant", {}).get("variant"))]
    if len(named) == 1:
        return named[0]
    raise ConfigError(f"--reference {given!r} is none of the compared objectives; give one of: "
                      f"{', '.join(title(s) for s in specs)}.")


def snr_specs(specs: list[dict], program) -> dict[str, dict]:
    """The estimators of the SNR against K: IWAE and DReG for a continuous latent; for a discrete
    one, each compared estimator that draws samples."""
    if program.discrete_latents:
        return {label(s).rsplit(" (", 1)[0]: s for s in specs if "num_particles" in s}
    return {"iwae": {"name": "iwae"}, "dreg": {"name": "dreg"}}


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def calibrate(comparison: Comparison) -> Costs:
    """A few steps and gradient draws of each objective, evaluations of a few test datapoints at two
    K, and a picture: the seconds each unit of a comparison's work takes on this machine."""
    c, cfg = comparison, comparison.config
    builds, steps, draws, evaluations = [], {}, {}, {}
    first = c._trainer(c.specs[0], 0, c.folders[0], quiet=True)  # (the first set-up imports and warms up: not timed)
    for spec, key, folder in zip(c.specs, c.keys, c.folders):
        started = time.perf_counter()
        trainer = c._trainer(spec, 0, folder, quiet=True)
        builds.append(time.perf_counter() - started)
        same_test_data(first, trainer, c.keys[0], key)
        c.measuring = c.requested  # (its grad_batch)
        program, grad_x = c.gradient_view(trainer)
        batches = trainer.batch_stream()
        lr = trainer.config.train.lr
        with pyro.validation_enabled(cfg.train.validate):
            trainer.train_step(next(batches), lr=lr, epoch=0.0)  # (the first step warms up)
            # the mean of five steps in a row, batch drawing included: a sum of steps is what is estimated (their
            # median ran 8-9% below the training's measured mean step, quiet machine, 50 and 200 steps)
            steps[key] = _seconds(lambda: [trainer.train_step(next(batches), lr=lr, epoch=0.0) for _ in range(5)]) / 5
            draws[key] = draw_costs(program, trainer.objective, grad_x, cfg.seed)
            if key == c.keys[0]:
                shared = _calibrate_measuring(c, trainer, program, grad_x)
                shared["disentangling"] = _calibrate_disentangling(trainer) if trainer.data.splits.factors is not None else 0.0
                evaluations[key] = shared.pop("evaluation")
            elif c.variants:  # (model variants evaluate at their own cost: a negative binomial's lgamma, not a Poisson's)
                evaluations[key] = _evaluation_seconds(*_evaluation_timer(c, trainer, program))
    first = evaluations[c.keys[0]]
    scale = {k: (pair / first[0], point / first[1]) for k, (pair, point) in evaluations.items()} if c.variants else {}
    return Costs(build=sum(builds) / len(builds), step=steps, draw=draws, evaluation_scale=scale, **shared)


def _evaluation_timer(c: Comparison, trainer: Trainer, program) -> tuple[Callable[..., float], int]:
    """(``seconds(k, exact=0, rows=m)``, m): the seconds of one evaluation of the first ``rows`` of m = up to
    128 test datapoints at K = k (``exact`` datapoints summed exactly), after one that warms up (not timed)."""
    data = trainer.data
    m = min(128, data.test.shape[0])
    labels = c._labels(program, data)

    def seconds(k: int, exact: int = 0, rows: int = m) -> float:
        return _seconds(lambda: evaluate(program, data.test[:rows], EvaluationSettings.of(c.config, k, exact_points=exact),
                                         labels=labels[:rows] if labels is not None else None))
    seconds(2)
    return seconds, m


def _evaluation_seconds(timed: Callable[..., float], m: int, one: float | None = None) -> tuple[float, float]:
    """(seconds per (datapoint, sample), seconds per datapoint besides its samples) of a run's evaluation,
    from its evaluations at K = 1 (``one``, where timed already) and K = 65: what sets the runs' evaluation
    costs against each other (a negative binomial's lgamma per sample, not a Poisson's)."""
    one = timed(1) if one is None else one
    many = timed(65)
    return max(many - one, 1e-9) / (64 * m), max(one, 1e-9) / m


def _calibrate_disentangling(trainer: Trainer) -> float:
    """Seconds of one run's disentanglement scores and traversals (``disentanglement_of``), timed on the
    calibration's model saved into a temporary folder: the scoring does not depend on training."""
    import tempfile

    kept = trainer.run_dir
    with tempfile.TemporaryDirectory() as tmp:
        trainer.run_dir = Path(tmp) / "run"
        try:
            prepare_run_dir(trainer.run_dir, overwrite=False, command="compare")
            trainer.write_checkpoint()
            return _seconds(lambda: disentanglement_of(trainer.run_dir))
        finally:
            trainer.run_dir = kept


def same_test_data(first: Trainer, other: Trainer, first_key: str, key: str) -> None:
    """Refuse a comparison whose runs would be scored on different test data (a variant whose likelihood
    prepares the pixels otherwise: binarized against grey): their log p(x) would not be of the same x."""
    a, b = first.data.test, other.data.test
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
        raise ConfigError(
            f"compare: {key} is scored on other test data than {first_key} (its likelihood prepares the data "
            f"differently, e.g. binarized against grey pixels), so their log p(x) are not of the same datapoints and "
            f"cannot be paired; compare such models in separate comparisons, or give them data both take as it is.")


def _calibrate_measuring(c: Comparison, trainer: Trainer, program, grad_x: torch.Tensor) -> dict:
    """The costs every objective shares: evaluation per datapoint and per sample, exact sums, the
    SNR-against-K draws, and writing the pictures."""
    cfg = c.config
    timed, m = _evaluation_timer(c, trainer, program)
    few = timed(1, rows=m // 4)
    one = timed(1)
    evaluation = _evaluation_seconds(timed, m, one)  # (this run's per-sample and per-datapoint costs, K = 1 and 65)
    point = max(0.0, one - few) / (m - m // 4)
    enumerable = enumeration_available(program)
    exact_point = max(0.0, timed(1, 1) - one) / m if enumerable else 0.0
    exact_grad = _seconds(lambda: exact_gradient(program, grad_x, max_states=ENUMERATION_MAX_STATES)) if enumerable else 0.0
    snr_draw = {}
    for name, spec in snr_specs(c.specs, program).items():
        at = {}
        for k in (1, 4):
            try:
                objective = OBJECTIVES.build({**objective_of(spec), "num_particles": k})
            except ConfigError:
                continue
            at[k] = draw_costs(program, objective, grad_x, cfg.seed)
        ks = sorted(at)
        if ks:
            first, last = at[ks[0]][1], at[ks[-1]][1]
            slope = (last - first) / (ks[-1] - ks[0]) if len(ks) > 1 else 0.0
            snr_draw[name] = (at[ks[0]][0], max(0.0, first - slope * ks[0]), max(0.0, slope))
    return {"pair": evaluation[0], "point": point, "call": max(0.0, one - m * point), "evaluation": evaluation,
            "exact_point": exact_point,
            "exact_gradient": exact_grad, "snr_draw": snr_draw, "writing": 2 * figure_seconds()}  # (the curves, and two lighter ones)


def draw_costs(program, objective, x: torch.Tensor, seed: int) -> tuple[float, float]:
    """Seconds of a call of gradient statistics besides its draws, and of one draw (from calls of
    one and of three draws, after one that warms up)."""
    gradient_statistics(program, objective, x, 1, seed)
    one = _seconds(lambda: gradient_statistics(program, objective, x, 1, seed))
    three = _seconds(lambda: gradient_statistics(program, objective, x, 3, seed))
    draw = max(0.0, three - one) / 2
    return max(0.0, one - draw), draw


_FIGURE_SECONDS: list[float] = []


def figure_seconds() -> float:
    """Seconds to draw one of compare's pictures (a run draws three), timed once in a process."""
    if not _FIGURE_SECONDS:
        fake = {"a": [[{"step": s, "train_seconds": s, "test_log_px": -s, "test_elbo": -s} for s in (0, 1, 2)]]}
        plots.comparison_figure_bytes(fake)  # (the first imports matplotlib: once in a process, not timed)
        _FIGURE_SECONDS.append(_seconds(lambda: plots.comparison_figure_bytes(fake)))
    return _FIGURE_SECONDS[0]


def describe_estimate(phases: dict[str, float], calibration: float) -> str:
    training = phases["training"] + phases["setup"]
    return (f"estimate: {phases['total']:.0f} s in all (up to {phases['limit']:.0f} s: whole runs have taken 0.9 to 1.1 "
            f"times the estimate): training {training:.0f} s, measuring "
            f"{phases['measuring']:.0f} s ({phases['measuring'] / max(training, 1e-9):.0%} on top of the training: "
            f"curves {phases['curves']:.0f} s, gradients {phases['gradients']:.0f} s, final scores "
            f"{phases['final']:.0f} s, SNR against K {phases['snr']:.0f} s), pictures {phases['writing']:.0f} s, "
            f"and the {calibration:.1f} s calibration that made this estimate")


def per_datapoint_csv(values: dict[str, torch.Tensor], particles: int, final_samples: int) -> str:
    """The per-datapoint test values of one run, as CSV (nats; full precision: the paired
    differences can be recomputed from them exactly)."""
    names = {"elbo": "elbo", "iwae_bound": f"iwae_bound_K{particles}", "log_px": f"log_px_K{final_samples}",
             "exact_log_px": "exact_log_px"}
    keys = [k for k in names if k in values]
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["datapoint", *(names[k] for k in keys)])
    for i in range(len(values["elbo"])):
        writer.writerow([i, *(repr(values[k][i].item()) for k in keys)])
    return table.getvalue()


def paired_table(results: list[ObjectiveResult], keys: list[str], reference: str) -> dict[str, dict[str, dict]]:
    """For each metric every run has per datapoint, each objective's difference from ``reference``:
    per seed the paired difference on the same test datapoints, then over seeds (:func:`over_seeds`)."""
    by = {(r.key, r.seed): r for r in results}
    seeds = sorted({r.seed for r in results})
    metrics = [m for m in METRICS if all(m in r.values for r in results)]
    return {metric: {key: over_seeds([paired_difference(by[key, s].values[metric], by[reference, s].values[metric])
                                      for s in seeds]) for key in keys if key != reference}
            for metric in metrics}


def curves_by_objective(results: list[ObjectiveResult]) -> dict[str, list[list[dict]]]:
    out: dict[str, list[list[dict]]] = {}
    for r in results:
        out.setdefault(r.key, []).append(r.curve)
    return out


def _by_key(c: Comparison) -> dict[str, list[ObjectiveResult]]:
    out: dict[str, list[ObjectiveResult]] = {key: [] for key in c.keys}
    for r in c.results:
        out[r.key].append(r)
    return out


def _name(c: Comparison, key: str) -> str:
    """The objective's name with options as the tables show it (#2 for the same objective again)."""
    spec = c.specs[c.keys.index(key)]
    return title(spec) + (key[len(label(spec)):] if key != label(spec) else "")


def results_markdown(c: Comparison) -> str:
    """The table of final scores: one row per objective (several seeds: means, ± the s.d. over seeds;
    the gradient statistics of the first seed)."""
    k, big, n = c.particles, c.measuring.final_samples, c.seeds
    runs = _by_key(c)
    exact = all("exact_log_px" in r.final for r in c.results)
    accuracy = all("accuracy" in r.final for r in c.results)
    scores = [name for name in DISENTANGLEMENT if all(name in r.final for r in c.results)]
    topic = [name for name in TOPICS if all(name in r.final for r in c.results)]
    spread = " (mean ± s.d. over seeds)" if n > 1 else ""
    lines = [f"| objective | K | steps | train s | ms/step | test ELBO{spread} | test IWAE bound (K={k}) | "
             f"test log p(x) (K={big}){spread or ' ± s.e.'} | {'exact test log p(x) | ' if exact else ''}"
             f"{'test accuracy | ' if accuracy else ''}{''.join(DISENTANGLEMENT[s] + ' | ' for s in scores)}"
             f"{''.join(TOPICS[s] + ' | ' for s in topic)}"
             f"active units | encoder grad variance | encoder grad SNR | decoder grad variance | decoder grad SNR |",
             "|" + " --- |" * (13 + exact + accuracy + len(scores) + len(topic))]
    for key, rs in runs.items():
        rows = [r.row(k, big) for r in rs]
        mean = lambda name: _mean([row[name] for row in rows])  # noqa: E731
        pm = lambda name, se: (f"{mean(name):.2f} ± {_sd([row[name] for row in rows]):.2f}" if n > 1  # noqa: E731
                               else f"{mean(name):.2f}" + (f" ± {rows[0][se]:.2f}" if se else ""))
        cells = [_name(c, key), str(rows[0]["K"] or "all states"), str(rows[0]["steps"]), f"{mean('train_seconds'):.1f}",
                 f"{mean('ms_per_step'):.2f}", pm("test_elbo", None), f"{mean(f'test_iwae_bound_K{k}'):.2f}",
                 pm(f"test_log_px_K{big}", "test_log_px_stderr")]
        if exact:
            cells.append(pm("test_exact_log_px", "test_exact_log_px_stderr"))
        if accuracy:
            cells.append(f"{mean('test_accuracy'):.4f} ± {rows[0]['test_accuracy_stderr']:.4f}")
        cells += [(f"{mean(s):.3f} ± {_sd([row[s] for row in rows]):.3f}" if n > 1 else
                   f"{rows[0][s]:.3f} ± {rows[0][s + '_stderr']:.3f}") for s in scores]
        cells += [(f"{mean('test_' + s):.3f}" + (f" ± {_sd([row['test_' + s] for row in rows]):.3f}" if n > 1 else ""))
                  if s == "npmi" else (f"{mean('test_' + s):.1f}" + (f" ± {_sd([row['test_' + s] for row in rows]):.1f}"
                                                                      if n > 1 else "")) for s in topic]
        first = rows[0]  # (gradient statistics: measured in the first seed's runs)
        cells += [_units(first["active_units"], rs[0].final["latent_dim"]), f"{first['encoder_grad_variance']:.3g}",
                  show_snr(first["encoder_grad_snr"]), f"{first['decoder_grad_variance']:.3g}",
                  show_snr(first["decoder_grad_snr"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_markdown(c: Comparison) -> str:
    """Each objective's difference from the reference, metric by metric, with the paired s.e. (and
    over seeds, their spread), marked where beyond two standard errors; and which spread dominates."""
    paired, n = c.paired(), c.seeds
    metrics = list(paired)
    head = ["objective"]
    for metric in metrics:
        head += [f"Δ {METRICS[metric]} ± paired s.e."] + (["s.d. over seeds"] if n > 1 else []) + ["beyond 2 s.e."]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key in c.keys:
        cells = [_name(c, key)]
        for metric in metrics:
            if key == c.ref:
                cells += ["(reference)"] + ([""] if n > 1 else []) + [""]
                continue
            d = paired[metric][key]
            cells += [f"{d['mean']:+.2f} ± {d['paired_stderr']:.2f}"] + ([f"{d['seed_sd']:.2f}"] if n > 1 else [])
            cells.append("**yes**" if d["beyond_two_stderr"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    test_n = len(c.results[0].values["elbo"]) if c.results else 0
    lines.append(f"\nΔ: mean over the same {test_n} test datapoints of (objective - {_name(c, c.ref)}), nats per "
                 f"datapoint; paired s.e.: sd(difference) / sqrt({test_n})" + (", root mean square over seeds" if n > 1 else "")
                 + ". Beyond 2 s.e.: " + ("|Δ| > 2 paired s.e. (one seed: the spread over initializations is not "
                                           "measured; --seeds N measures it)." if n == 1 else
                                           f"|mean Δ| > 2 max(s.d. over seeds, paired s.e.) / sqrt({n})."))
    if n > 1:
        lines += [dominance(metric, paired[metric]) for metric in metrics]
    return "\n".join(lines)


def dominance(metric: str, rows: dict[str, dict]) -> str:
    """Whether the spread over seeds or the paired within-seed error is the larger, for one metric."""
    if not rows:
        return ""
    seeds = sum(d["dominant"] == "seeds" for d in rows.values())
    sd = sorted(d["seed_sd"] for d in rows.values())[len(rows) // 2]
    se = sorted(d["paired_stderr"] for d in rows.values())[len(rows) // 2]
    which = ("the spread over seeds dominates: read the differences against it" if seeds * 2 > len(rows) else
             "the paired within-seed error dominates" if seeds * 2 < len(rows) else "neither dominates")
    return (f"- {METRICS[metric]}: the s.d. over seeds exceeds the paired s.e. for {seeds} of {len(rows)} "
            f"objectives (medians {sd:.2f} and {se:.2f}): {which}.")


def gradients_markdown(c: Comparison) -> str:
    first = c.config.seed
    biased = any("bias" in g.get("encoder", {}) for r in c.results for g in r.gradients.values())
    extra = " encoder bias ± s.e. (relative) | decoder bias ± s.e. (relative) |" if biased else ""
    lines = ["| objective | snapshot | encoder variance | encoder SNR | decoder variance | decoder SNR |" + extra,
             "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if biased else "")]
    for r in c.results:
        for snap in SNAPSHOTS:
            g = r.gradients.get(snap)
            if g and r.seed == first:
                line = (f"| {_name(c, r.key)} | {snap} (step {g['step']}) | "
                        f"{g['encoder']['variance']:.3g} | {show_snr(snr_of(g['encoder']))} | "
                        f"{g['decoder']['variance']:.3g} | {show_snr(snr_of(g['decoder']))} |")
                if biased:
                    line += "".join(f" {g[p]['bias']:.3g} ± {g[p]['bias_stderr']:.2g} "
                                    f"({g[p]['relative_bias']:.3f}) |" for p in ("encoder", "decoder"))
                lines.append(line)
    if biased:
        lines.append("\nbias: |mean of the estimator's draws - the exact gradient| (every latent state summed); "
                     "s.e.: the size that distance has from the draws' noise alone (an unbiased estimator's bias "
                     "is about its s.e.); relative: bias / |exact gradient|; exact (∞): the draws do not vary.")
    return "\n".join(lines)


def time_line(c: Comparison) -> str:
    t = c.timings
    measuring = sum(t.get(p, 0.0) for p in ("curves", "gradients", "final", "snr"))
    return (f"time: estimated {c.estimated['total']:.0f} s (up to {c.estimated['limit']:.0f} s), took {t['total']:.0f} s "
            f"(training {t.get('training', 0):.0f} s, "
            f"measuring {measuring:.0f} s = {measuring / max(t.get('training', 0), 1e-9):.0%} on top of the training, "
            f"calibration {t.get('calibration', 0):.1f} s, set-up and writing {t.get('setup', 0) + t.get('writing', 0):.0f} s)")


def write_tables(c: Comparison) -> None:
    m = c.measuring
    settings = {
        "budget": c.budget.describe(), "particles": c.particles, "seeds": c.seeds, "reference": c.ref,
        "eval_samples": m.final_samples, "curve_points": m.curve_points, "curve_samples": m.curve_samples,
        "grad_draws": m.grad_draws, "grad_batch": m.grad_batch, "snr_ks": list(m.snr_ks), "seed": c.config.seed,
        "measuring_scaled": c.scaled_note, "total_limit_seconds": c.total,
        "units": "nats per datapoint; gradients of the objective per datapoint",
    }
    payload = {
        "settings": settings, "time": {"estimate": c.estimated, "measured": c.timings}, "rows": c.rows(),
        "paired_differences": c.paired(),
        "objectives": [{"objective": r.key, "seed": r.seed, "curve": r.curve, "gradients": r.gradients,
                        "final": r.final} for r in c.results],
        "snr_vs_k": c.snr_vs_k,
    }
    write_text(c.out / "results.json", json.dumps(payload, indent=2) + "\n")
    rows = c.rows()
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(c.out / "results.csv", table.getvalue())
    seeds = f"{c.seeds} initializations (seeds {c.config.seed}..{c.config.seed + c.seeds - 1}), the data order and " \
            f"noise of seed {c.config.seed}" if c.seeds > 1 else f"seed {c.config.seed}"
    intro = (f"Budget {c.budget.describe()} per objective, {seeds}; nats per datapoint on the test set of "
             f"{c.config.data['name']}." + (f" The {c.scaled_note}." if c.scaled_note else ""))
    write_text(c.out / "results.md",
               f"{intro}\n\n{c.markdown()}\n\nDifferences from {_name(c, c.ref)}:\n\n{c.paired_markdown()}\n\n"
               f"Gradient statistics ({m.grad_draws} draws on a fixed batch of {m.grad_batch}"
               f"{', seed ' + str(c.config.seed) if c.seeds > 1 else ''}):\n\n{c.gradient_markdown()}\n\n{time_line(c)}\n")
