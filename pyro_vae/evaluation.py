"""Evaluating a model program on a dataset: every datapoint's ELBO terms and importance-sampled
log p(x), with standard errors, and exact values where a method exists.

Per datapoint x, in nats (the estimators are ``metrics.py``'s, the exact values ``exact.py``'s):
ELBO(x) and its two terms, log p(x) with K importance samples, the gap log p(x) - ELBO(x) (an
estimate of KL(q(z|x) || p(z|x))), active units and bits/dim; :class:`Evaluation` holds them and
their means with standard errors.

What an estimate uses travels as one :class:`EvaluationSettings` (K, seed, batch size, chunk,
exact points), built from a run's ``[eval]`` table by :meth:`EvaluationSettings.of`.

An evaluation given a ``store`` folder keeps each batch's per-datapoint values there as it goes
(:class:`EvaluationStore`), so an interrupted one (K = 5,000 on a CPU can take an hour) resumes at
the batches not yet done, with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .distributed import SINGLE, Distributed
from .errors import RunDirError
from .exact import ExactEvidence, closed_form_available, enumeration_available, exact_evidence
from .files import save_tensors, write_text
from .labels import LabelPolicy, Unlabelled
from .labels import Estimates
from .metrics import ESTIMATES, _elbo_terms, active_units, bits_per_dim, chunk_pairs_for, code_usage, evidence_terms
from .data.storage import RowsOnDisk
from .networks import eval_mode
from .numerics import seeded
from .programs import Program, as_program, checked_program


def _batch_estimates() -> Estimates:
    """Evaluation's estimators (``metrics.py``'s), read as an evaluation starts: x is checked once for
    the whole evaluation (``checked_program``), not again per batch."""
    return dataclasses.replace(ESTIMATES, elbo_terms=_elbo_terms, evidence_terms=evidence_terms)


@dataclass(frozen=True)
class EvaluationSettings:
    """What an evaluation estimates and how: K = ``samples`` importance samples (0: the ELBO terms
    only), the ``seed`` of its draws, ``batch_size`` datapoints at a time, at most ``chunk_pairs``
    (datapoint, sample) pairs in memory (None: the device's default, ``metrics.chunk_pairs_for``),
    exact values on ``exact_points`` datapoints where a method exists (0: none), and E_q[z] for the
    active units (``posterior_means``). With K > 0 the ELBO is averaged over the same K draws that
    estimate log p(x); without, over ``elbo_samples`` draws."""

    samples: int = 0
    seed: int = 0
    batch_size: int = 250
    chunk_pairs: int | None = None
    exact_points: int = 0
    posterior_means: bool = True
    elbo_samples: int = 1

    @classmethod
    def of(cls, config, samples: int | None = None, **changes) -> "EvaluationSettings":
        """The settings of a run's config (its ``seed`` and ``[eval]`` table; ``samples`` overrides
        ``eval.samples``), with ``changes``."""
        ev = config.eval
        settings = cls(samples=ev.samples if samples is None else samples, seed=config.seed,
                       batch_size=ev.batch_size, chunk_pairs=ev.chunk_pairs, exact_points=ev.exact_points,
                       elbo_samples=ev.elbo_samples)
        return dataclasses.replace(settings, **changes)


@dataclass
class Evaluation:
    """Per-datapoint estimates on one dataset, and their means with standard errors."""

    reconstruction: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor
    posterior_mean: torch.Tensor | None  # None: not computed (evaluate(posterior_means=False))
    kl_analytic: bool  # KL(q(z|x) || p(z)) in closed form (one latent site)
    num_pixels: int
    discrete: bool
    seed: int
    log_px: torch.Tensor | None = None
    samples: int = 0
    exact: object | None = None  # exact.ExactEvidence where a method exists ...
    exact_index: torch.Tensor | None = None  # ... on these datapoints
    kl_per_site: bool = False  # several latent sites, each KL in closed form given the draws before it
    code_groups: tuple[int, int] | None = None  # (M, K): the latent is M one-hot groups of K classes
    on_simplex: bool = False  # the latent is a point of the simplex (a Dirichlet guide): no active units
    policy: LabelPolicy = dataclasses.field(default_factory=Unlabelled)  # how the program took labels (labels.py)
    labels: torch.Tensor | None = None  # the true classes (semi-supervised: for accuracy)
    predicted: torch.Tensor | None = None  # argmax_y q(y|x) (semi-supervised)
    num_classes: int | None = None
    elbo_draws: int = 1  # the draws of z each datapoint's ELBO is averaged over
    elbo_stderr: torch.Tensor | None = None  # per datapoint: the standard error of that average
    log_px_stderr: torch.Tensor | None = None  # per datapoint: the importance-sampling standard error

    @property
    def n(self) -> int:
        return self.elbo.shape[0]

    @property
    def gap(self) -> torch.Tensor | None:
        return None if self.log_px is None else self.log_px - self.elbo

    @property
    def gap_stderr(self) -> torch.Tensor | None:
        """Per datapoint, a standard error of the gap: the ELBO's and log p(x)'s combined as if
        independent (they come from the same draws and are positively correlated, so this errs large)."""
        if self.elbo_stderr is None or self.log_px_stderr is None:
            return None
        return (self.elbo_stderr**2 + self.log_px_stderr**2).sqrt()

    @property
    def confusion(self) -> torch.Tensor | None:
        """Counts (C, C): row the true class, column argmax_y q(y|x) (semi-supervised, given labels)."""
        if self.predicted is None or self.labels is None:
            return None
        flat = self.labels.long() * self.num_classes + self.predicted.long()
        return torch.bincount(flat, minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)

    def _kl_estimator(self) -> str:
        if self.policy.wording.kl_estimator:
            return self.policy.wording.kl_estimator
        if self.kl_analytic:
            return "closed form"
        return "closed form per site, given the draws before it" if self.kl_per_site else "Monte Carlo"

    def summary(self) -> dict:
        """Means over datapoints (nats per datapoint) with standard errors, for JSON and tables."""

        def stat(v: torch.Tensor) -> dict:
            se = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
            return {"mean": v.mean().item(), "stderr": se}

        out = {
            "units": "nats per datapoint (sums over pixels, means over datapoints)",
            "datapoints": self.n,
            "seed": self.seed,
            "elbo": stat(self.elbo),
            "reconstruction": stat(self.reconstruction),
            "kl": stat(self.kl),
            "kl_estimator": self._kl_estimator(),
            "elbo_draws": self.elbo_draws,
        }
        if self.elbo_stderr is not None:  # each datapoint's ELBO is a mean of draws: how far it may be from its value
            out["elbo_stderr_per_datapoint"] = {"mean": self.elbo_stderr.mean().item(),
                                                "largest": self.elbo_stderr.max().item()}
        if self.policy.wording.note is not None:
            key, note = self.policy.wording.note
            out[key] = note
        if self.confusion is not None:
            correct = (self.predicted.long() == self.labels.long()).double()
            out["classification"] = {"accuracy": stat(correct), "classes": self.num_classes,
                                     "predicted_by": "argmax_y q(y|x)", "confusion": self.confusion.tolist(),
                                     "confusion_rows": "true class", "confusion_columns": "predicted class"}
        if self.posterior_mean is not None and not self.on_simplex:  # (proportions: Var_x > 0.01 is no test there)
            out |= {"active_units": active_units(self.posterior_mean), "latent_dim": self.posterior_mean.shape[-1]}
            if self.code_groups is not None:
                out["code_usage"] = code_usage(self.posterior_mean, *self.code_groups)
        if self.log_px is not None:
            out["importance_samples"] = self.samples
            out["log_px"] = stat(self.log_px)
            out["gap"] = stat(self.gap)
            if self.gap_stderr is not None:
                out["gap_stderr_per_datapoint"] = {"mean": self.gap_stderr.mean().item(),
                                                   "largest": self.gap_stderr.max().item()}
                out["gap_below_zero"] = {"datapoints": int((self.gap < 0).sum()),
                                         "beyond_two_stderr": int((self.gap < -2 * self.gap_stderr).sum())}
            out["bits_per_dim"] = stat(bits_per_dim(self.log_px, self.num_pixels))
            out["bits_per_dim_is_discrete"] = self.discrete
        if self.exact is not None:
            ex = self.exact
            out["exact"] = {
                "method": ex.method,
                "datapoints": ex.n,
                "log_px": stat(ex.log_px.float()),
                "elbo": stat(ex.elbo.float()),
                "kl_q_posterior": stat(ex.kl_q_posterior.float()),
                "largest_quadrature_error": ex.log_px_error.max().item(),
            }
            out["exact"]["datapoint_indices"] = self.exact_index.tolist()
            if self.log_px is not None:
                error = self.log_px[self.exact_index].double() - ex.log_px.cpu()
                out["exact"]["importance_sampling_error"] = {
                    "mean": error.mean().item(), "mean_absolute": error.abs().mean().item(),
                    "note": f"importance-sampled (K={self.samples}) minus exact log p(x), same datapoints"}
        return out

    def write_csv(self, path: str | Path) -> None:
        """One row per datapoint (its index in the dataset, then its values in nats: the ELBO averaged
        over ``elbo_draws`` draws and its terms, log p(x), the gap, each estimate's standard error),
        for paired comparisons of two models on the same datapoints."""
        columns = {"elbo": self.elbo, "reconstruction": self.reconstruction, "kl": self.kl}
        if self.log_px is not None:
            columns |= {"log_px": self.log_px, "gap": self.gap}
        if self.elbo_stderr is not None:  # (after the columns of before: readers by position keep working)
            columns["elbo_stderr"] = self.elbo_stderr
        if self.log_px_stderr is not None and self.gap_stderr is not None:
            columns |= {"log_px_stderr": self.log_px_stderr, "gap_stderr": self.gap_stderr}
        header = "index," + ",".join(f"{k}_nats" for k in columns)
        rows = [f"{i}," + ",".join(f"{v[i].item():.6f}" for v in columns.values()) for i in range(self.n)]
        write_text(path, "\n".join([header, *rows]) + "\n")

    def table(self, title: str = "") -> str:
        """The summary as aligned text lines."""
        s = self.summary()
        kl_how = {"closed form per site, given the draws before it": "closed form per site"}.get(
            self._kl_estimator(), self._kl_estimator())
        words = self.policy.wording  # what the numbers are of: x alone, x given y, or x with y summed out
        draws = f"  [mean of {self.elbo_draws} draws]" if self.elbo_draws > 1 else "  [one draw]"
        rows = [
            (words.elbo + draws, s["elbo"]),
            (words.reconstruction, s["reconstruction"]),
            (words.kl or f"  KL(q(z|x) || p(z))  [{kl_how}]", s["kl"]),
        ]
        if self.log_px is not None:
            rows += [
                (f"{words.log_px}  [importance sampled, K={self.samples}{words.per_class}]", s["log_px"]),
                (words.gap, s["gap"]),
            ]
        lines = [title] if title else []
        lines.append(f"{'nats per datapoint':<48} {'mean':>11} {'std. err.':>10}")
        lines += [f"{label:<48} {v['mean']:>11.3f} {v['stderr']:>10.3f}" for label, v in rows]
        if "classification" in s:
            acc = s["classification"]["accuracy"]
            lines.append(f"{'accuracy  argmax_y q(y|x)':<48} {acc['mean']:>11.4f} {acc['stderr']:>10.4f}")
        if "code_usage" in s:
            u = s["code_usage"]
            used, perplexity = u["classes_used"], u["perplexity"]
            lines.append(f"{'classes used per group (argmax_k q(z_g=k|x))':<48} {sum(used) / len(used):>7.1f} / "
                         f"{u['classes']}  ({u['groups']} group{'s' if u['groups'] > 1 else ''}, {min(used)} to {max(used)})")
            lines.append(f"{'code perplexity exp H(mean_x q(z_g|x))':<48} {sum(perplexity) / len(perplexity):>7.2f} / "
                         f"{u['classes']}")
        elif "active_units" in s:
            mean = self.policy.wording.posterior_mean  # (semi-supervised: y the true label)
            lines.append(f"{f'active units (Var_x {mean} > 0.01)':<48} {s['active_units']:>7} / {s['latent_dim']}")
        if self.log_px is not None:
            kind = "" if self.discrete else "  (of a density, not a discrete likelihood)"
            lines.append(f"{'bits/dim':<48} {s['bits_per_dim']['mean']:>11.4f}{kind}")
        if self.exact is not None:
            ex = s["exact"]
            lines.append(f"exact, by {ex['method']}, on {ex['datapoints']} datapoints:")
            lines.append(f"{'  log p(x)  [exact]':<48} {ex['log_px']['mean']:>11.3f} {ex['log_px']['stderr']:>10.3f}")
            lines.append(f"{'  ELBO  [exact]':<48} {ex['elbo']['mean']:>11.3f} {ex['elbo']['stderr']:>10.3f}")
            lines.append(f"{'  KL(q(z|x) || p(z|x))  [exact]':<48} {ex['kl_q_posterior']['mean']:>11.3f} "
                         f"{ex['kl_q_posterior']['stderr']:>10.3f}")
            if "importance_sampling_error" in ex:
                err = ex["importance_sampling_error"]
                lines.append(f"{f'  importance sampled - exact log p(x), K={self.samples}':<48} {err['mean']:>11.4f}"
                             f"   (mean |error| {err['mean_absolute']:.4f})")
            if ex["largest_quadrature_error"] > 0:
                lines.append(f"{'  quadrature error estimate, largest':<48} {ex['largest_quadrature_error']:>11.1e}")
        return "\n".join(lines)


def fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of named tensors' names, dtypes, shapes and bytes: equal exactly when they are."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().reshape(-1))  # unit stride (an expanded t has 0)
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class EvaluationStore:
    """Each evaluation batch's per-datapoint values, kept in ``folder`` as they are computed.

    ``key.json`` records what the batches are of: the model's parameters and buffers and the data
    (by :func:`fingerprint`) and the settings that change the numbers (K, seed, batch size, chunk).
    A folder holding another evaluation's batches is refused, never mixed in or overwritten. Each
    batch file is written whole or not at all (a temporary file, then a rename), so an evaluation
    killed mid-write resumes cleanly.
    """

    KEY = "key.json"

    def __init__(self, folder: str | Path, key: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.KEY
        if path.is_file():
            held = json.loads(path.read_text())
            if held != key:
                differ = sorted(k for k in key.keys() | held.keys() if key.get(k) != held.get(k))
                raise RunDirError(
                    f"{self.folder} holds the batches of another evaluation (it differs in {', '.join(differ)}). "
                    f"Remove that folder to evaluate afresh, or give this evaluation a folder of its own.")
        else:
            write_text(path, json.dumps(key, indent=2) + "\n")  # (each writer a temporary file of its own)

    @classmethod
    def for_evaluation(cls, folder, program: Program, x: torch.Tensor, labels: torch.Tensor | None,
                       settings: EvaluationSettings, chunk_pairs: int) -> "EvaluationStore":
        """The store of the evaluation of ``program`` on x (and labels) with ``settings``: keyed on
        the parameters, the data and every setting that changes the numbers."""
        s = settings
        return cls(folder, {
            "model": fingerprint(program.module.state_dict().items()),
            "data": x.digest() if isinstance(x, _OnDevice) else fingerprint([("x", x)]),
            "datapoints": x.shape[0], "samples": s.samples, "seed": s.seed, "batch_size": s.batch_size,
            "chunk_pairs": chunk_pairs, "posterior_means": s.posterior_means,
            "elbo_draws": program.policy.elbo_draws(s),
            **({"labels": fingerprint([("y", labels)])} if labels is not None else {})})

    def _batch(self, index: int) -> Path:
        return self.folder / f"batch-{index:06d}.pt"

    def load(self, index: int) -> dict[str, torch.Tensor] | None:
        path = self._batch(index)
        return torch.load(path, weights_only=True) if path.is_file() else None

    def save(self, index: int, terms: dict[str, torch.Tensor]) -> None:
        save_tensors(self._batch(index), terms)

    @staticmethod
    def count(folder: str | Path) -> int:
        """How many batches the store in ``folder`` has finished (0 for a folder not there)."""
        return len(list(Path(folder).glob("batch-*.pt")))


def batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch ``index``: whichever process evaluates it draws the same numbers."""
    return (seed * 1_000_003 + index) % 2**63


@torch.no_grad()
def evaluate(
    program,
    x: torch.Tensor,
    settings: EvaluationSettings | None = None,
    *,
    dist: Distributed = SINGLE,
    store: str | Path | None = None,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    **options,
) -> Evaluation:
    """ELBO terms for every datapoint of ``x`` and, if ``settings.samples`` > 0, importance-sampled
    log p(x). ``settings`` (:class:`EvaluationSettings`) may be given field by field as keywords
    instead (``evaluate(program, x, samples=1000, seed=0)``), or changed so (``options``).

    With ``exact_points`` > 0, also the exact log p(x), ELBO and KL(q(z|x) || p(z|x)) where a method
    exists (``exact.py``): the closed form of a linear-Gaussian model on every datapoint, or 2-D
    grid quadrature on ``exact_points`` datapoints spread evenly over x. ``x`` must already be
    prepared for the likelihood (e.g. binarized). Each batch of ``batch_size`` datapoints runs
    under a seed of its own (``batch_seed``), so the numbers do not depend on which process (in
    data-parallel evaluation, ``dist``) computes which batch, and the training stream is untouched.
    ``posterior_means=False`` skips E_q[z] (the active units): sampled, not free, for a guide
    without a closed-form mean (IAF, hierarchical), and not needed by the per-epoch scoring.
    With ``store``, a folder, each batch's values are kept there and a batch already there is read
    back instead of computed (:class:`EvaluationStore`): an interrupted evaluation resumes. The
    exact values (2-D latents and linear-Gaussian models only) are recomputed, not stored.
    ``progress`` shows a progress bar over the batches, with the time left (rank 0).
    ``program`` is a model program (the stock VAE or any other) or its :class:`~pyro_vae.programs.Program`.

    ``labels`` (integer classes, one per datapoint of x), for a program that takes them
    (its label policy, ``labels.py``): a conditional program is scored given them (ELBO(x|y), log p(x|y);
    required); a semi-supervised one is scored on x alone, y summed over its classes exactly (ELBO
    with y enumerated, log p(x) = log sum_y p(y) p(x|y) with K draws of z per class), and the labels
    give the accuracy of argmax_y q(y|x) and its confusion matrix, and the posterior means are
    E_q[z|x, y] at each datapoint's own label.
    """
    s = dataclasses.replace(settings or EvaluationSettings(), **options)
    program, x = _scored(program, x)
    policy = program.policy
    labels = policy.evaluation_labels(program, labels, x.shape[0])
    chunk_pairs = chunk_pairs_for(program, x.device, s.chunk_pairs)  # resolved once, not per batch or exact point
    kept = EvaluationStore.for_evaluation(store, program, x, labels, s, chunk_pairs) if store is not None else None
    batches = _Batches(program, x, labels, s, chunk_pairs, kept, progress and dist.main, _batch_estimates())
    with eval_mode(program.module):
        parts = dist.map_items(len(batches.starts), batches)
        exact, exact_index = _exact_part(program, x, s.exact_points, chunk_pairs, dist) \
            if s.exact_points > 0 and policy.exact_evidence else (None, None)
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in ("kl_analytic", "kl_per_site")}
    meant = policy.mean_view(program, labels)  # whose E_q[z] it is
    return Evaluation(
        reconstruction=cat["reconstruction"], kl=cat["kl"], elbo=cat["elbo"], posterior_mean=cat.get("posterior_mean"),
        kl_analytic=all(bool(p["kl_analytic"]) for p in parts), kl_per_site=all(bool(p.get("kl_per_site")) for p in parts),
        num_pixels=math.prod(x.shape[1:]), discrete=program.discrete, seed=s.seed,
        code_groups=next(iter(meant.code_groups.values())) if len(meant.code_groups) == 1 else None,
        on_simplex=bool(getattr(meant, "simplex_sites", [])), log_px=cat.get("log_px"), samples=s.samples,
        exact=exact, exact_index=exact_index, policy=policy,
        elbo_draws=policy.elbo_draws(s), elbo_stderr=cat.get("elbo_stderr"), log_px_stderr=cat.get("log_px_stderr"),
        labels=labels.cpu() if labels is not None else None,
        predicted=cat["predicted"].long() if "predicted" in cat else None, num_classes=program.num_classes,
    )


def _scored(program, x) -> tuple[Program, "torch.Tensor | _OnDevice"]:
    """The program and x an evaluation scores: x checked whole, or rows on disk checked as each batch is read."""
    if isinstance(x, RowsOnDisk):
        program = as_program(program, tuple(x.shape[1:]))
        return program, _OnDevice(x, program)
    return checked_program(program, x), x


class _OnDevice:
    """Rows on disk as an evaluation reads them: ``x[a:b]`` reads those rows, dense on the program's
    device, checked against what the program observes."""

    def __init__(self, rows: RowsOnDisk, program: Program) -> None:
        self.rows, self.program = rows, program
        self.device = next(iter(program.module.parameters()), torch.zeros(0)).device
        self.shape = rows.shape

    def digest(self) -> str:
        return self.rows.digest()

    def __getitem__(self, index) -> torch.Tensor:
        x = self.rows[index.cpu() if torch.is_tensor(index) else index].float().to(self.device)
        self.program.check_observed(x, "the streamed rows")
        return x


@dataclass
class _Batches:
    """The evaluation's batches as a callable of the batch indices a process computes (what
    ``Distributed.map_items`` shares out): each batch scored by the program's label policy under its
    own seed (:func:`batch_seed`), or read back from the store where it was kept before."""

    program: Program
    x: torch.Tensor
    labels: torch.Tensor | None
    settings: EvaluationSettings
    chunk_pairs: int
    kept: EvaluationStore | None
    progress: bool
    estimates: Estimates

    @property
    def starts(self) -> range:
        return range(0, self.x.shape[0], self.settings.batch_size)

    def __call__(self, indices: list[int]) -> list[dict]:
        from tqdm.auto import tqdm

        s = self.settings
        bar = tqdm(indices, disable=not self.progress, unit="batch", leave=False, dynamic_ncols=True,
                   desc=f"evaluating, K = {s.samples}" if s.samples else "evaluating")
        return [self.one(b) for b in bar]

    def one(self, b: int) -> dict:
        terms = self.kept.load(b) if self.kept is not None else None
        if terms is not None:
            return terms
        s, start = self.settings, self.starts[b]
        xb = self.x[start : start + s.batch_size]
        yb = self.labels[start : start + s.batch_size] if self.labels is not None else None
        with seeded(batch_seed(s.seed, b), self.x.device):
            terms = self.program.policy.score_batch(self.program, xb, yb, s, self.chunk_pairs, self.estimates)
        terms = {k: v.float().cpu() for k, v in terms.items()}
        if self.kept is not None:
            self.kept.save(b, terms)
        return terms


def _exact_part(program: Program, x: torch.Tensor, exact_points: int, chunk_pairs: int | None, dist: Distributed):
    """Exact values where a method exists: all datapoints for closed forms, else ``exact_points``
    spread over x (which may be sorted by class), the quadrature shared out over processes."""
    n = x.shape[0]
    closed_form = closed_form_available(program) or enumeration_available(program)
    if not closed_form and (program.latent_dim != 2 or program.discrete_latents):
        return None, None
    if closed_form or exact_points >= n:
        index = torch.arange(n)
    else:
        index = torch.linspace(0, n - 1, exact_points).round().long().unique()
    if closed_form:
        return exact_evidence(program, x[index.to(x.device)]), index

    def points(ids: list[int]) -> list:
        return [exact_evidence(program, x[int(index[i]) : int(index[i]) + 1], chunk_pairs=chunk_pairs) for i in ids]

    return ExactEvidence.concat(dist.map_items(len(index), points)), index
