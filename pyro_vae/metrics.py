"""Evidence and its bounds, estimated: the intractable half of the VAE, in numbers.

For any model program (the stock VAE, a subclass, your own), from its per-particle terms
(``terms.py``: the same numbers the objectives are written over). Per datapoint x, in nats:

* ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))       (reconstruction term minus KL to the prior;
  the KL in closed form where a formula exists for the guide/prior pair, else by Monte Carlo);
* log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x)   (importance sampling,
  Burda et al. 2016: a lower bound in expectation that tightens to log p(x) as K grows);
* gap(x) = log p(x) - ELBO(x), an estimate of KL(q(z|x) || p(z|x)), the term the ELBO drops;
* active units: latent coordinates u whose posterior mean moves with the data,
  Var_x(E_q[z_u]) > 0.01 (Burda et al. 2016);
* bits/dim = -log p(x) / (D log 2) for D pixels.

All estimates run under a seed of their own (``torch.random.fork_rng``), so the same seed gives the
same numbers and evaluation never disturbs the training random stream. Memory is bounded by
``chunk_pairs`` (datapoint, sample) pairs at a time, whatever K and the dataset size: the importance
weights are reduced chunk by chunk with a streaming log-sum-exp. Left unset, the chunk suits the
device (:func:`chunk_pairs_for`).

An evaluation given a ``store`` folder keeps each batch's per-datapoint values there as it goes
(:class:`EvaluationStore`), so an interrupted one (K = 5,000 on a CPU can take an hour) resumes at
the batches not yet done, with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .distributed import SINGLE, Distributed
from .errors import RunDirError
from .files import save_tensors, write_text
from .numerics import seeded  # noqa: F401  (re-exported: evaluation seeds live with numerics)
from .programs import Program, as_program, checked_program
from .terms import POSTERIOR_MEAN_SAMPLES, posterior_mean  # noqa: F401  (re-exported)

ACTIVE_UNIT_THRESHOLD = 0.01
CPU_CHUNK_BYTES = 12 * 2**20
ACCELERATOR_CHUNK_PAIRS = 16384


def _parameter(module: torch.nn.Module) -> torch.Tensor:
    p = next(module.parameters(), None)
    return p if p is not None else torch.zeros(())


def widest_activation(program) -> int:
    """Numbers per latent draw in the widest layer output of p(x|z), from one probe pass of one
    draw and one datapoint (in eval mode, so that layers such as batch norm accept the single draw;
    the modes are restored). For the stock VAE the decoder's layers and the likelihood's own
    networks (an autoregressive likelihood's); for another program every module that the model's
    run and log p(x|z) reach."""
    program = as_program(program)
    widths = [1]

    def record(module, inputs, output) -> None:
        if torch.is_tensor(output):
            widths.append(output.numel())

    vae = program.vae if program.direct else None
    modules = [vae.decoder, vae.likelihood] if vae is not None else [program.module]
    modes = [m.training for m in modules]
    hooks = [m.register_forward_hook(record) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad(), torch.random.fork_rng():
            weight = _parameter(modules[0])
            if vae is not None:
                head = vae.decoder(torch.zeros(1, vae.latent_dim, device=weight.device, dtype=weight.dtype))
                if any(True for _ in vae.likelihood.children()):  # layers of its own (an autoregressive likelihood's)
                    vae.likelihood(head).log_prob(torch.zeros(1, *vae.data_shape, device=weight.device, dtype=weight.dtype))
            else:
                x = program._placeholder(1)
                site = program._observed_site(x)
                site["fn"].log_prob(x)
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
        for hook in hooks:
            hook.remove()
    return max(widths)


def chunk_pairs_for(program, device: torch.device, chunk_pairs: int | None = None) -> int:
    """``chunk_pairs`` if given, else the default for ``program`` on ``device``: on the CPU as many
    (datapoint, sample) pairs as keep p(x|z)'s widest activation (:func:`widest_activation`) near
    12 MiB (between 64 and 16384 pairs), on an accelerator 16384.

    On the CPU glibc serves an allocation above its mmap threshold (adaptive, at most 32 MiB) with
    fresh pages, returned when it is freed, so a tensor that large is page-faulted in anew every
    chunk and never stays in cache: 16384 pairs of a 784-pixel decoder output are 51 MiB. Measured
    in ``benchmarks/eval_chunks.py`` (the widest activation is a proxy: several tensors of about its
    size are alive at once). An accelerator wants large chunks to fill it.
    """
    if chunk_pairs is not None:
        return chunk_pairs
    if torch.device(device).type != "cpu":
        return ACCELERATOR_CHUNK_PAIRS
    program = as_program(program)
    per_pair = widest_activation(program) * _parameter(program.module).element_size()
    return max(64, min(ACCELERATOR_CHUNK_PAIRS, CPU_CHUNK_BYTES // per_pair))


def analytic_kl_available(program) -> bool:
    """Whether KL(q(z|x) || p(z)) has a closed form at every latent site of the program."""
    program = as_program(program)
    with torch.no_grad(), torch.random.fork_rng():
        x = program._placeholder(1)
        with program.source.given(x) as at_x:
            return at_x.draw(1).kl()[1]


@torch.no_grad()
def elbo_terms(program, x: torch.Tensor, num_samples: int = 1, posterior_means: bool = True) -> dict[str, torch.Tensor]:
    """Per-datapoint reconstruction E_q[log p(x|z)], KL(q||p(z)) and ELBO, with ``num_samples`` z's
    (the KL in closed form where every latent site has one, else by Monte Carlo), and
    (``posterior_means``, where the latent is one continuous vector) E_q[z], which a guide without
    a closed-form mean pays for in draws."""
    return _elbo_terms(checked_program(program, x), x, num_samples, posterior_means)


def _elbo_terms(program: Program, x: torch.Tensor, num_samples: int, posterior_means: bool) -> dict[str, torch.Tensor]:
    with program.source.given(x) as at_x:
        terms = at_x.draw(num_samples)
        reconstruction = terms.log_likelihood.mean(0)
        kl, analytic = terms.kl()
        kl = kl.mean(0)
        single = len(terms.latents) == 1  # several sites: each KL given the draws of the sites before it
        out = {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl,
               "kl_analytic": torch.tensor(analytic and single), "kl_per_site": torch.tensor(analytic and not single)}
        if posterior_means and program.latent_dim is not None:
            (out["posterior_mean"],) = at_x.means().values()
    return out


def _streamed_log_sums(program: Program, x: torch.Tensor, num_samples: int, chunk_pairs: int | None, squares: bool):
    """log sum_k w_k (and log sum_k w_k^2 if ``squares``) over K = num_samples draws, chunk by chunk."""
    per_chunk = max(1, chunk_pairs_for(program, x.device, chunk_pairs) // x.shape[0])
    total = torch.full(x.shape[:1], -math.inf, device=x.device)
    total_sq = total.clone() if squares else None
    done = 0
    with program.source.given(x) as at_x:  # q(z|x) and p(z) built once, x's own work done once (stock VAE)
        while done < num_samples:
            k = min(per_chunk, num_samples - done)
            log_w = at_x.draw(k).log_weights
            total = torch.logaddexp(total, log_w.logsumexp(0))
            if squares:
                total_sq = torch.logaddexp(total_sq, (2 * log_w).logsumexp(0))
            done += k
    return total, total_sq


@torch.no_grad()
def log_evidence(program, x: torch.Tensor, num_samples: int = 1000, chunk_pairs: int | None = None) -> torch.Tensor:
    """Importance-sampled log p(x) per datapoint with K = ``num_samples`` draws from q(z|x):
    log (1/K) sum_k w_k, w_k = p(x|z_k) p(z_k) / q(z_k|x) (the program's terms' log-weights).

    The K weights are drawn in chunks of at most ``chunk_pairs // batch`` samples (``chunk_pairs``
    unset: the device's default, :func:`chunk_pairs_for`) and combined by a streaming log-sum-exp,
    so memory does not grow with K.
    """
    total, _ = _streamed_log_sums(checked_program(program, x), x, num_samples, chunk_pairs, squares=False)
    return total - math.log(num_samples)


@torch.no_grad()
def log_evidence_diagnostics(program, x: torch.Tensor, num_samples: int = 1000,
                             chunk_pairs: int | None = None) -> dict[str, torch.Tensor]:
    """log p(x) as in :func:`log_evidence`, with, per datapoint, its standard error and the
    effective sample size of the importance weights.

    With normalized weights v_k = w_k / sum_j w_j: ESS = 1 / sum_k v_k^2, and by the delta method
    Var(log p_hat) ~= Var(w) / (K E[w]^2), estimated as (K sum_k v_k^2 - 1) / K. (The estimator's
    bias, about -Var/2, is of the same order; both shrink like 1/K.)
    """
    program = checked_program(program, x)
    total, total_sq = _streamed_log_sums(program, x, num_samples, chunk_pairs, squares=True)
    sum_sq_normalized = (total_sq - 2 * total).exp()
    return {
        "log_px": total - math.log(num_samples),
        "stderr": ((num_samples * sum_sq_normalized - 1).clamp_min(0) / num_samples).sqrt(),
        "ess": 1.0 / sum_sq_normalized,
    }


def active_units(posterior_means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent coordinates with Var_x(E_q[z_u | x]) > threshold (Burda et al. 2016)."""
    return int((posterior_means.var(dim=0) > threshold).sum().item())


def bits_per_dim(log_px: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """-log p(x) / (D log 2): nats per datapoint as bits per pixel."""
    return -log_px / (num_pixels * math.log(2.0))


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

    @property
    def n(self) -> int:
        return self.elbo.shape[0]

    @property
    def gap(self) -> torch.Tensor | None:
        return None if self.log_px is None else self.log_px - self.elbo

    def _kl_estimator(self) -> str:
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
        }
        if self.posterior_mean is not None:
            out |= {"active_units": active_units(self.posterior_mean), "latent_dim": self.posterior_mean.shape[-1]}
        if self.log_px is not None:
            out["importance_samples"] = self.samples
            out["log_px"] = stat(self.log_px)
            out["gap"] = stat(self.gap)
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
        """One row per datapoint (its index in the dataset, then its values in nats), for paired
        comparisons of two models on the same datapoints."""
        columns = {"elbo": self.elbo, "reconstruction": self.reconstruction, "kl": self.kl}
        if self.log_px is not None:
            columns |= {"log_px": self.log_px, "gap": self.gap}
        header = "index," + ",".join(f"{k}_nats" for k in columns)
        rows = [f"{i}," + ",".join(f"{v[i].item():.6f}" for v in columns.values()) for i in range(self.n)]
        write_text(path, "\n".join([header, *rows]) + "\n")

    def table(self, title: str = "") -> str:
        """The summary as aligned text lines."""
        s = self.summary()
        kl_how = {"closed form per site, given the draws before it": "closed form per site"}.get(
            self._kl_estimator(), self._kl_estimator())
        rows = [
            ("ELBO", s["elbo"]),
            ("  reconstruction  E_q[log p(x|z)]", s["reconstruction"]),
            (f"  KL(q(z|x) || p(z))  [{kl_how}]", s["kl"]),
        ]
        if self.log_px is not None:
            rows += [
                (f"log p(x)  [importance sampled, K={self.samples}]", s["log_px"]),
                ("gap log p(x) - ELBO  ~ KL(q(z|x) || p(z|x))", s["gap"]),
            ]
        lines = [title] if title else []
        lines.append(f"{'nats per datapoint':<48} {'mean':>11} {'std. err.':>10}")
        lines += [f"{label:<48} {v['mean']:>11.3f} {v['stderr']:>10.3f}" for label, v in rows]
        if "active_units" in s:
            lines.append(f"{'active units (Var_x E_q[z_u] > 0.01)':<48} {s['active_units']:>7} / {s['latent_dim']}")
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
    *,
    samples: int = 0,
    seed: int = 0,
    batch_size: int = 250,
    chunk_pairs: int | None = None,
    exact_points: int = 0,
    dist: Distributed = SINGLE,
    posterior_means: bool = True,
    store: str | Path | None = None,
    progress: bool = False,
) -> Evaluation:
    """ELBO terms for every datapoint of ``x`` and, if ``samples`` > 0, importance-sampled log p(x).

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
    """
    program = checked_program(program, x)
    module = program.module
    starts = list(range(0, x.shape[0], batch_size))
    chunk_pairs = chunk_pairs_for(program, x.device, chunk_pairs)  # resolved once, not per batch or exact point
    kept = None
    if store is not None:
        kept = EvaluationStore(store, {
            "model": fingerprint(module.state_dict().items()), "data": fingerprint([("x", x)]), "datapoints": x.shape[0],
            "samples": samples, "seed": seed, "batch_size": batch_size, "chunk_pairs": chunk_pairs,
            "posterior_means": posterior_means})

    def batches(indices: list[int]) -> list[dict]:
        from tqdm.auto import tqdm

        out = []
        bar = tqdm(indices, disable=not (progress and dist.main), unit="batch", leave=False, dynamic_ncols=True,
                   desc=f"evaluating, K = {samples}" if samples else "evaluating")
        for b in bar:
            terms = kept.load(b) if kept is not None else None
            if terms is None:
                xb = x[starts[b] : starts[b] + batch_size]
                with seeded(batch_seed(seed, b), x.device):
                    terms = _elbo_terms(program, xb, 1, posterior_means)  # (x checked once, above)
                    if samples > 0:
                        terms["log_px"] = log_evidence(program, xb, samples, chunk_pairs)
                terms = {k: v.float().cpu() for k, v in terms.items()}
                if kept is not None:
                    kept.save(b, terms)
            out.append(terms)
        return out

    was_training = module.training
    module.eval()
    try:
        parts = dist.map_items(len(starts), batches)
        exact, exact_index = _exact_part(program, x, exact_points, chunk_pairs, dist) if exact_points > 0 else (None, None)
    finally:
        module.train(was_training)
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k not in ("kl_analytic", "kl_per_site")}
    return Evaluation(
        reconstruction=cat["reconstruction"],
        kl=cat["kl"],
        elbo=cat["elbo"],
        posterior_mean=cat.get("posterior_mean"),
        kl_analytic=all(bool(p["kl_analytic"]) for p in parts),
        kl_per_site=all(bool(p.get("kl_per_site", False)) for p in parts),
        num_pixels=math.prod(x.shape[1:]),
        discrete=program.discrete,
        seed=seed,
        log_px=cat.get("log_px"),
        samples=samples,
        exact=exact,
        exact_index=exact_index,
    )


def _exact_part(program: Program, x: torch.Tensor, exact_points: int, chunk_pairs: int | None, dist: Distributed):
    """Exact values where a method exists: all datapoints for closed forms, else ``exact_points``
    spread over x (which may be sorted by class), the quadrature shared out over processes."""
    from .exact import ExactEvidence, closed_form_available, exact_evidence

    n = x.shape[0]
    closed_form = closed_form_available(program)
    if not closed_form and program.latent_dim != 2:
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


# ---------------------------------------------------------------------------------------------
# Gradient estimators: variance and signal-to-noise ratio at fixed parameters


def gradient_statistics(program, objective, x: torch.Tensor, draws: int = 100, seed: int = 0) -> dict[str, dict]:
    """Draw ``draws`` independent gradient estimates of the objective (per datapoint, on the fixed
    batch x, at the current parameters) and summarize each parameter group
    (``Program.parameter_groups``: the inference network and the generative model) by

    * ``variance``: the trace of the covariance of the gradient estimator, sum_i Var(g_i);
    * ``snr``: the mean over coordinates of |E[g_i]| / std(g_i) (Rainforth et al. 2018);
    * ``norm_snr``: |E[g]| / sqrt(trace Cov), the same for the whole group at once.

    Moments are accumulated in float64, one draw at a time, so memory does not grow with draws.
    Runs under its own seed; the parameters are not changed.
    """
    program = checked_program(program, x)
    module = program.module
    groups = program.parameter_groups()
    sums = {g: [torch.zeros_like(p, dtype=torch.float64) for p in ps] for g, ps in groups.items()}
    squares = {g: [torch.zeros_like(p, dtype=torch.float64) for p in ps] for g, ps in groups.items()}
    with seeded(seed, x.device):
        for _ in range(draws):
            module.zero_grad(set_to_none=True)
            surrogate, _ = objective.step(program.source, x)
            (-surrogate / x.shape[0]).backward()  # the gradient of the objective per datapoint
            for g, ps in groups.items():
                for s, q, p in zip(sums[g], squares[g], ps):
                    if p.grad is not None:
                        grad = p.grad.double()
                        s += grad
                        q += grad * grad
    module.zero_grad(set_to_none=True)
    out = {}
    for g in groups:
        if not sums[g]:
            continue
        mean = torch.cat([s.flatten() for s in sums[g]]) / draws
        var = (torch.cat([q.flatten() for q in squares[g]]) / draws - mean**2) * draws / max(draws - 1, 1)
        var = var.clamp_min(0.0)
        moving = var > 0
        out[g] = {
            "variance": var.sum().item(),
            "snr": (mean[moving].abs() / var[moving].sqrt()).mean().item() if moving.any() else float("nan"),
            "norm_snr": (mean.norm() / var.sum().sqrt()).item() if var.sum() > 0 else float("inf"),
            "mean_norm": mean.norm().item(),
            "coordinates": mean.numel(),
        }
    return out
