"""How a model program uses labels y: one policy object, chosen once from the program's signature.

===================  =====================================  =================================================
policy               the program's methods                  meaning
===================  =====================================  =================================================
:class:`Unlabelled`  ``model(x)``, ``guide(x)``             no labels: p(x), q(z|x)
:class:`Conditional` ``model(x, y)``, ``guide(x, y)``       every datapoint's label given: p(x|y), q(z|x, y)
:class:`SemiSupervised` ``model(x, y=None)``, same guide    y observed where known, a latent q(y|x) elsewhere
===================  =====================================  =================================================

The policy owns every place where the three regimes differ, so that nothing else in the package
branches on how a program uses labels:

* the program given labels: its terms source, the views ``Program.labelled(y)`` and the probes'
  view, and the refusal of a conditional program run without labels;
* training: the options of a labelled run (``data.labels``, ``classifier_weight``), the labelled
  datapoints and the pool the epochs run over, which batches a step scores and how, and the
  protocol check on a training batch;
* evaluation: how one evaluation batch is scored, and the words of its tables;
* the trained model's API: the label arguments of ``Run`` (``elbo``, ``log_prob``, ``classify``) and
  the columns ``encode`` writes and what they are called.

A fourth regime (multi-label y, say) is one more subclass of :class:`LabelPolicy` here, with one
line in :func:`policy_of` that recognises its programs (CONTRIBUTING.md says how).

The estimators a policy scores with live in ``metrics.py``, a layer above this one: they are passed
in as :class:`Estimates` (``metrics.ESTIMATES``), never imported here.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro.poutine as poutine
import torch

from .config import OBJECTIVES
from .data.prepare import labelled_subset
from .errors import ConfigError, DataError, ProgramError
from .terms import TraceSource, source_for


@dataclass(frozen=True)
class Estimates:
    """The estimators a policy scores with (``metrics.ESTIMATES`` fills it), per datapoint in nats:
    ``elbo_terms(program, x, num_samples, posterior_means)``, ``log_evidence(program, x, K, chunk)``
    and its ``..._diagnostics`` (with the standard error and ESS), ``evidence_terms(program, x, K,
    chunk, posterior_means)`` (the ELBO's terms and log p(x) from one pass of K draws, each with its
    standard error); the same with the label y summed
    exactly over its classes (``summed_...``); and ``predictions(program, x)``, argmax_y q(y|x) and
    q(y|x) per class."""

    elbo_terms: Callable
    log_evidence: Callable
    log_evidence_diagnostics: Callable
    evidence_terms: Callable
    summed_elbo_terms: Callable
    summed_log_evidence: Callable
    summed_log_evidence_diagnostics: Callable
    predictions: Callable


@dataclass(frozen=True)
class Wording:
    """What a policy's numbers are called in evaluation tables and files."""

    elbo: str = "ELBO"
    reconstruction: str = "  reconstruction  E_q[log p(x|z)]"
    kl: str = ""  # "" : "  KL(q(z|x) || p(z))  [<how>]"
    log_px: str = "log p(x)"
    per_class: str = ""  # appended to "importance sampled, K=..."
    gap: str = "gap log p(x) - ELBO  ~ KL(q(z|x) || p(z|x))"
    posterior_mean: str = "E_q[z_u]"
    kl_estimator: str = ""  # "": the estimator the terms used
    note: tuple[str, str] | None = None  # an extra (key, sentence) of the evaluation summary
    encode_given: str = ""  # what encode's z is given
    encode_score: str = "ELBO and log p(x)"


class LabelPolicy:
    """The interface of every policy, with the behaviour of a program that takes no labels
    (:class:`Unlabelled`) as its defaults. One instance per :class:`~pyro_vae.programs.Program`, shared by its labelled views; a
    training run's labelled datapoints are kept on it (:meth:`prepare_training`)."""

    name = "unlabelled"
    takes_labels = False  #: whether model and guide take y
    exact_evidence = True  #: whether exact log p(x) (exact.py) applies to the program as evaluated
    legacy_use: str | None = None  #: ``programs.label_use``'s old value (deprecated)
    wording = Wording()

    def __init__(self) -> None:
        self.pool: torch.Tensor | None = None  # the training datapoints an epoch runs over (None: all)
        self.labelled_index: torch.Tensor | None = None
        self.labelled_objective = None
        self.classifier_weight = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- the program given labels ---------------------------------------------------------------

    def check_module(self, module) -> int | None:
        """The program's number of classes (None: it takes no labels), checked."""
        return None

    def source(self, module, labels: torch.Tensor | None, cache: dict):
        """The terms source of ``module`` with ``labels`` given (None: none given)."""
        return source_for(module)

    def view_labels(self, program, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels a view ``program.labelled(labels)`` is given, checked (refused where the program
        cannot take them)."""
        raise ProgramError(f"{program.name} does not take labels (its model is model(x)); labels are given only to "
                           f"a program whose model and guide take y.")

    def probe_labels(self, given: torch.Tensor | None) -> bool:
        """Whether the probes (shapes, supports, widths) run the program with labels (class 0 of each)."""
        return False

    def require_runnable(self, program) -> None:
        """Refuse to run ``program`` as it is (a conditional program without its labels)."""

    def model_fn(self, program):
        return program.module.model

    def guide_fn(self, program):
        return program.module.guide

    def label_posterior(self, program, x: torch.Tensor):
        raise ProgramError(f"{program.name} has no posterior over labels: only a semi-supervised program (model(x, "
                           f"y=None), y latent where not given) does.")

    # -- training -------------------------------------------------------------------------------

    def prepare_training(self, program, data, config, objective, log: Callable[[str], None], dist) -> dict | None:
        """Check the run's label options against the program and the data, and choose what the
        epochs run over; returns what the run records of its labelled datapoints (None: nothing)."""
        count, per_class = _label_counts(config)
        alpha = objective.classifier_weight
        if count or per_class or alpha:
            what = (f"data.labels = {count}" if count else f"data.labels_per_class = {per_class}" if per_class
                    else f"train.objective.classifier_weight = {alpha:g}")
            raise ConfigError(f"{what} is for a semi-supervised program (model(x, y=None), e.g. model.program = "
                              f"\"m2\"); {program.name} {self._not_semi_supervised}")
        return None

    _not_semi_supervised = "does not learn from labels."

    def epoch_size(self, n: int) -> int:
        """The datapoints an epoch runs over, of ``n`` training datapoints."""
        return n if self.pool is None else len(self.pool)

    def epoch_batches(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """An epoch's minibatches as training-set indices (a permutation of range(epoch_size) split)."""
        return batches if self.pool is None else [self.pool[b.to(self.pool.device)] for b in batches]

    def step(self, program, data, index: torch.Tensor, generator: torch.Generator):
        """What a training step on datapoints ``index`` scores: (the program's view for the batch,
        a labelled batch to add to the step or None)."""
        return program, None

    def check_training_batch(self, program, objective, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Run the objective's terms on a training batch x (with its ``labels``): the protocol check."""
        objective.terms(program.source, x)

    # -- evaluation -----------------------------------------------------------------------------

    def scored_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels an evaluation of a dataset split passes on (None where the program takes none)."""
        return None

    def evaluation_labels(self, program, labels, n: int) -> torch.Tensor | None:
        """``evaluate(labels=...)``'s labels checked: one class per datapoint of x, or refused."""
        if labels is not None:
            raise ProgramError(f"evaluate(labels=...): {program.name} does not take labels (its model is model(x)).")
        return None

    def score_batch(self, program, x: torch.Tensor, labels: torch.Tensor | None, settings,
                    chunk_pairs: int | None, estimates: Estimates) -> dict:
        """One evaluation batch's per-datapoint terms: with K = ``settings.samples`` > 0 the ELBO,
        its two terms and log p(x) from the same K draws, each with its standard error; else the ELBO
        and its terms from ``settings.elbo_samples`` draws; E_q[z] where asked."""
        view = self.scoring_view(program, labels)
        if settings.samples > 0:
            return estimates.evidence_terms(view, x, settings.samples, chunk_pairs, settings.posterior_means)
        return estimates.elbo_terms(view, x, settings.elbo_samples, settings.posterior_means)

    def elbo_draws(self, settings) -> int:
        """How many draws of z each datapoint's ELBO is averaged over in an evaluation with ``settings``."""
        return settings.samples if settings.samples > 0 else settings.elbo_samples

    def scoring_view(self, program, labels: torch.Tensor | None):
        """The view that scores x where the program is run as it scores data: given the labels where
        it needs them (a conditional program), else as it is."""
        return program

    def mean_view(self, program, labels: torch.Tensor | None):
        """Whose E_q[z] an evaluation's posterior means are."""
        return program

    # -- the trained model's API ----------------------------------------------------------------

    def given(self, program, labels):
        """The program a ``Run`` call runs, given ``labels`` (None: none)."""
        if labels is None:
            return program
        return program.labelled(torch.as_tensor(labels))

    def elbo(self, program, x, labels, samples: int, estimates: Estimates) -> torch.Tensor:
        return estimates.elbo_terms(self.given(program, labels), x, samples, False)["elbo"]

    def log_prob(self, program, x, labels, samples: int, chunk_pairs: int | None, estimates: Estimates) -> dict:
        return estimates.log_evidence_diagnostics(self.given(program, labels), x, samples, chunk_pairs)

    def evidence(self, program, x, labels, samples: int, chunk_pairs: int | None, estimates: Estimates) -> dict:
        """Per datapoint: the ELBO and log p(x) from one pass of K = ``samples`` draws, each with its
        standard error (``Estimates.evidence_terms``), given ``labels`` where the program takes them."""
        terms = estimates.evidence_terms(self.given(program, labels), x, samples, chunk_pairs, False)
        return {k: terms[k] for k in ("elbo", "elbo_stderr", "log_px", "log_px_stderr")}

    def classify(self, program, x, estimates: Estimates, samples: int = 100, chunk_pairs: int | None = None,
                 prior=None):
        """(argmax_y p(y|x), p(y|x) per class (batch, C)) by the program's own account of y."""
        raise ProgramError(f"classify: {program.name} takes no labels, so it has no classifier: a semi-supervised "
                           f"program (model(x, y=None)) has q(y|x), a conditional one (model(x, y)) p(x|y).")

    def encode_batch(self, run, x: torch.Tensor, labels: torch.Tensor | None, samples: int, seed: int) -> dict:
        """One batch of ``encode``'s table: per latent site q's mean and scale, the ELBO and the
        importance-sampled log p(x) from the same K draws, each with its standard error (and what the
        policy adds)."""
        return {"sites": run.encode_sites(x, seed=seed, labels=labels), **run.evidence(x, samples, seed, labels)}

    def encode_labels(self, program, labels: torch.Tensor | None, what: str) -> torch.Tensor | None:
        """The labels ``encode`` passes on for data ``what`` with ``labels`` (None where unused)."""
        return None

    def latent_sites(self, program) -> list[str]:
        """The latent sites ``encode`` writes, in the guide's order."""
        return list(program.latent_shapes)

    # -- pictures and commands ------------------------------------------------------------------

    def drawing_labels(self, program, classes: list[int] | None) -> list[int] | None:
        """The classes ``sample --classes`` draws (a list, or None: unconditioned draws)."""
        if classes is not None:
            raise ConfigError(f"--classes: {program.name} does not take labels.")
        return None


class Unlabelled(LabelPolicy):
    """``model(x)`` and ``guide(x)``: a program that takes no labels (the base class's behaviour)."""


class Conditional(LabelPolicy):
    """``model(x, y)`` and ``guide(x, y)``: every datapoint's label is given (p(x|y), q(z|x, y)); the
    program is scored given its labels (ELBO(x|y), log p(x|y)) and refuses to run without them."""

    name = "conditional"
    takes_labels = True
    exact_evidence = False
    legacy_use = "required"
    _not_semi_supervised = "takes every label (a conditional program)."
    wording = Wording(
        elbo="ELBO(x|y)", reconstruction="  reconstruction  E_q[log p(x|z, y)]", kl="  KL(q(z|x, y) || p(z|y))",
        log_px="log p(x|y)", gap="gap log p(x|y) - ELBO  ~ KL(q(z|x, y) || p(z|x, y))", posterior_mean="E_q[z_u|x, y]",
        note=("conditional", "every value given the datapoint's label y: ELBO(x|y), log p(x|y)"),
        encode_given=" given each datapoint's label", encode_score="ELBO(x|y) and log p(x|y)")

    def check_module(self, module) -> int:
        classes = getattr(module, "num_classes", None)
        if not (isinstance(classes, int) and classes >= 2):
            raise ProgramError(
                f"{type(module).__qualname__} takes labels y (model(x, y...)): give it a num_classes attribute (an "
                f"int >= 2, the classes 0..C-1 its labels may take).")
        return classes

    def source(self, module, labels, cache):
        return _LabelledSource(module, labels, cache) if labels is not None else _LabelsNeeded(type(module).__qualname__)

    def view_labels(self, program, labels):
        if labels is None:
            _LabelsNeeded(program.name).refuse()
        return program.check_labels(labels)

    def probe_labels(self, given):
        return True

    def require_runnable(self, program) -> None:
        if program.labels is None:
            _LabelsNeeded(program.name).refuse()

    def model_fn(self, program):
        return program.source.model

    def guide_fn(self, program):
        return program.source.guide

    def prepare_training(self, program, data, config, objective, log, dist):
        super().prepare_training(program, data, config, objective, log, dist)
        _check_training_labels(program, data, config)
        return None

    def step(self, program, data, index, generator):
        return program.labelled(data.train_labels[index]), None

    def check_training_batch(self, program, objective, x, labels):
        objective.terms(program.labelled(labels).source, x)

    def scored_labels(self, labels):
        return labels

    def evaluation_labels(self, program, labels, n):
        if labels is None:
            program.labelled(None)  # refused, saying how to give them
        return _one_per_datapoint(program, labels, n)

    def scoring_view(self, program, labels):
        return program.labelled(labels)

    def mean_view(self, program, labels):
        return program.labelled(labels)

    def given(self, program, labels):
        return program.labelled(None if labels is None else torch.as_tensor(labels))

    def encode_labels(self, program, labels, what):
        if labels is None:
            raise DataError(f"{program.name} scores x given its label y (model(x, y)), and {what} has no labels: give "
                            f"--data a file with them (an .npz with a y array, a csv with a label column, a folder of "
                            f"one subfolder per class).")
        return labels

    def latent_sites(self, program):
        return list(program.probing(1).latent_shapes)

    def classify(self, program, x, estimates, samples=100, chunk_pairs=None, prior=None):
        """Bayes' rule over the program's p(x|y): log p(y|x) = log p(x|y) + log p(y) - log sum_c p(x|c) p(c),
        each log p(x|y = c) importance sampled (K = ``samples``); p(y) uniform unless ``prior`` gives it."""
        classes = program.num_classes
        log_prior = _log_class_prior(prior, classes).to(x.device)
        log_px_y = torch.stack([estimates.log_evidence_diagnostics(
            program.labelled(torch.full((len(x),), c, dtype=torch.long, device=x.device)), x, samples,
            chunk_pairs)["log_px"] for c in range(classes)], dim=-1)
        posterior = (log_px_y + log_prior).softmax(-1)
        return posterior.argmax(-1), posterior

    def drawing_labels(self, program, classes):
        if classes is None:
            raise ConfigError(f"{program.name} is a conditional program, p(x|z, y): say which classes to draw, "
                              f"--classes all or --classes 0,3,7 (rows of --n images each).")
        return classes


def _log_class_prior(prior, classes: int) -> torch.Tensor:
    """log p(y) over ``classes`` classes: uniform for None, else C probabilities (non-negative, summing
    to 1 within 1e-6), refused in words otherwise."""
    if prior is None:
        return torch.full((classes,), -math.log(classes))
    p = torch.as_tensor(prior, dtype=torch.float64).flatten()
    if p.numel() != classes or not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or abs(float(p.sum()) - 1) > 1e-6:
        raise ConfigError(f"prior must be {classes} class probabilities (non-negative, summing to 1), got {prior!r}.")
    return p.log().float()


class SemiSupervised(LabelPolicy):
    """``model(x, y=None)`` and ``guide(x, y=None)``: y observed where a label is known, else a latent
    with posterior q(y|x) (Kingma et al. 2014's M2). Trained on the unlabelled pool with a labelled
    batch beside each step (``data.labels`` of them shown); evaluated on x alone, y summed over its
    classes exactly, the labels scoring the classifier argmax_y q(y|x)."""

    name = "semi-supervised"
    takes_labels = True
    exact_evidence = False
    legacy_use = "optional"
    wording = Wording(
        elbo="ELBO  [y summed exactly]", reconstruction="  reconstruction  E_q[log p(x|z, y)]",
        kl="  KL(q(y, z|x) || p(y, z))", per_class=" per class", gap="gap log p(x) - ELBO  ~ KL(q(y, z|x) || p(y, z|x))",
        posterior_mean="E_q[z_u|x, y]", kl_estimator="y summed exactly, z's KL by Monte Carlo",
        note=("labels_summed", "y summed over its classes exactly in the ELBO and log p(x); z sampled"),
        encode_given=" given y = argmax_y q(y|x) (predicted; q_y: q(y|x) per class)",
        encode_score="ELBO and log p(x) with y summed exactly")

    check_module = Conditional.check_module

    def source(self, module, labels, cache):
        return _LabelledSource(module, labels, cache)

    def view_labels(self, program, labels):
        return None if labels is None else program.check_labels(labels)

    def probe_labels(self, given):
        return given is not None

    def model_fn(self, program):
        return program.source.model

    def guide_fn(self, program):
        return program.source.guide

    def label_posterior(self, program, x):
        own = getattr(program.module, "label_posterior", None)
        if own is not None:
            return own(x)
        with poutine.block(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            trace = poutine.trace(program.module.guide).get_trace(x, y=None)
        if LABEL_SITE not in trace.nodes:
            raise ProgramError(f"the guide of {program.name} has no site \"{LABEL_SITE}\": a semi-supervised program's "
                               f"guide samples y ~ q(y|x) at site \"{LABEL_SITE}\" when no labels are given.")
        return trace.nodes[LABEL_SITE]["fn"]

    def prepare_training(self, program, data, config, objective, log, dist):
        count, per_class = _label_counts(config)
        if per_class:
            count = per_class * program.num_classes
        _check_training_labels(program, data, config)
        if dist.active:
            raise ConfigError("a semi-supervised program trains in one process: data-parallel training does not share "
                              "out its labelled batches yet.")
        n, device = data.train.shape[0], data.train_labels.device
        seed = int(config.data.get("labels_seed", 0))
        self.labelled_index = (labelled_subset(data.train_labels, count, seed, program.num_classes).to(device)
                               if count else torch.arange(n, device=device))
        hidden = torch.ones(n, dtype=torch.bool, device=device)
        hidden[self.labelled_index] = False
        unlabelled = torch.nonzero(hidden).flatten()
        self.pool = unlabelled if len(unlabelled) else self.labelled_index
        self.labelled_objective = objective if not objective.discrete_latents else OBJECTIVES.build(
            "elbo", "the labelled batches' objective")
        self.classifier_weight = objective.classifier_weight
        record = {"count": len(self.labelled_index), "seed": seed,
                  "indices_sha256": hashlib.sha256(self.labelled_index.cpu().numpy().tobytes()).hexdigest(),
                  "indices": self.labelled_index.cpu().tolist()}  # (Run.data.labelled_indices: a baseline's labels)
        log(f"labels: {len(self.labelled_index)} of {n} training datapoints labelled"
            + (f" ({count // program.num_classes} per class, seed {seed})" if count else " (all)")
            + f"; {len(unlabelled)} unlabelled, y summed or sampled by '{objective.name}'; labelled batches' "
              f"ELBO(x, y) by '{self.labelled_objective.name}'"
            + (f" (y observed: nothing discrete left for '{objective.name}')"
               if self.labelled_objective is not objective else ""))
        return record

    def step(self, program, data, index, generator):
        if self.pool is self.labelled_index:  # every label shown: each batch is a labelled one
            return program.labelled(data.train_labels[index]), None
        n = len(self.labelled_index)  # a labelled batch beside the unlabelled one, drawn from the data generator
        pick = torch.randperm(n, generator=generator, device=generator.device)[:min(n, index.shape[0])]
        chosen = self.labelled_index[pick.to(self.labelled_index.device)]
        x = program.contract.prepare_batch(data.train[chosen].float(), generator)
        return program, LabelledBatch(program, self.labelled_objective, self.classifier_weight, x,
                                      data.train_labels[chosen])

    def check_training_batch(self, program, objective, x, labels):
        objective.terms(program.source, x)
        labelled = self.labelled_objective or objective
        labelled.terms(program.labelled(labels).source, x)  # and a labelled batch

    def scored_labels(self, labels):
        return labels

    def evaluation_labels(self, program, labels, n):
        return None if labels is None else _one_per_datapoint(program, labels, n)

    def score_batch(self, program, x, labels, settings, chunk_pairs, estimates):
        terms = estimates.summed_elbo_terms(program, x)  # y summed out exactly; the labels only score the classifier
        if settings.samples > 0:
            terms["log_px"] = estimates.summed_log_evidence(program, x, settings.samples, chunk_pairs)
        if labels is not None:
            terms["predicted"] = estimates.predictions(program, x)[0]
            given = program.labelled(labels)
            if settings.posterior_means and given.latent_dim is not None:  # E_q[z|x, y], y the label
                (terms["posterior_mean"],) = given.posterior_means(x).values()
        return terms

    def mean_view(self, program, labels):
        return program.labelled(labels) if labels is not None else program

    def elbo_draws(self, settings) -> int:
        return 1  # one draw of z per class (y summed exactly)

    def elbo(self, program, x, labels, samples, estimates):
        if labels is None:  # y a latent, summed over its classes exactly (as evaluation scores it)
            return estimates.summed_elbo_terms(program, x)["elbo"]
        return super().elbo(program, x, labels, samples, estimates)

    def log_prob(self, program, x, labels, samples, chunk_pairs, estimates):
        if labels is None:
            return estimates.summed_log_evidence_diagnostics(program, x, samples, chunk_pairs)
        return super().log_prob(program, x, labels, samples, chunk_pairs, estimates)

    def evidence(self, program, x, labels, samples, chunk_pairs, estimates):
        if labels is not None:
            return super().evidence(program, x, labels, samples, chunk_pairs, estimates)
        evidence = estimates.summed_log_evidence_diagnostics(program, x, samples, chunk_pairs)
        return {"elbo": estimates.summed_elbo_terms(program, x)["elbo"],  # (one draw of z per class)
                "log_px": evidence["log_px"], "log_px_stderr": evidence["stderr"]}

    def classify(self, program, x, estimates, samples=100, chunk_pairs=None, prior=None):
        return estimates.predictions(program, x)

    def encode_batch(self, run, x, labels, samples, seed):
        predicted, q_y = run.classify(x)  # q(y|x), and z at its most probable class
        return {"sites": run.encode_sites(x, seed=seed, labels=predicted), "predicted": predicted, "q_y": q_y,
                **run.evidence(x, samples, seed)}

    def latent_sites(self, program):
        return list(program.probing(1).labelled(torch.zeros(1, dtype=torch.long)).latent_shapes)

    def drawing_labels(self, program, classes):
        return classes


#: the site of a program that learns from labels: observed in a labelled batch, latent (q(y|x)) otherwise
LABEL_SITE = "y"


def policy_of(cls: type) -> LabelPolicy:
    """The label policy of a program class, read off the signatures of its ``model`` and ``guide``:
    neither takes ``y`` (:class:`Unlabelled`), both take a required ``y`` (:class:`Conditional`), both
    take ``y=None`` (:class:`SemiSupervised`); model and guide that differ are refused."""
    kinds = []
    for method in ("model", "guide"):
        p = inspect.signature(getattr(cls, method)).parameters.get("y")
        kinds.append(Unlabelled if p is None else Conditional if p.default is inspect.Parameter.empty
                     else SemiSupervised)
    if kinds[0] is not kinds[1]:
        said = {Unlabelled: "none", Conditional: "(x, y)", SemiSupervised: "(x, y=None)"}
        raise ProgramError(
            f"{cls.__qualname__}: model and guide must take labels alike, both (x, y) for a conditional program, both "
            f"(x, y=None) for a semi-supervised one, or neither; model takes {said[kinds[0]]}, guide {said[kinds[1]]}.")
    return kinds[0]()


def label_use(cls: type) -> str | None:
    """Deprecated (use :func:`policy_of`): how a program takes labels as a string, None (no labels),
    ``"required"`` (conditional) or ``"optional"`` (semi-supervised)."""
    return policy_of(cls).legacy_use


# ---------------------------------------------------------------------------------------------
# The pieces the policies share


@dataclass
class LabelledBatch:
    """A semi-supervised step's labelled batch: its bound ELBO(x, y) (y observed) by ``objective``,
    plus alpha log q(y|x) (``classifier_weight``): called, its (surrogate, loss); the loss is minus the
    bound alone, in nats summed over the batch (the classifier term is not part of a bound)."""

    program: Any
    objective: Any
    classifier_weight: float
    x: torch.Tensor
    y: torch.Tensor

    @property
    def datapoints(self) -> int:
        return self.x.shape[0]

    def __call__(self, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        surrogate, loss = self.objective.step(self.program.labelled(self.y).source, self.x, kl_weight)
        if self.classifier_weight:
            q = self.program.label_posterior(self.x)
            one_hot = torch.nn.functional.one_hot(self.y, self.program.num_classes).to(self.x.dtype)
            surrogate = surrogate - self.classifier_weight * q.log_prob(one_hot.view(-1, *q.event_shape)).sum()
        return surrogate, loss


class _LabelsNeeded:
    """The terms source of a conditional program with no labels given: refuses, saying how to give them."""

    def __init__(self, name: str) -> None:
        self.name = name

    def refuse(self, *args, **kwargs):
        raise ProgramError(
            f"{self.name} is a conditional program (model(x, y)): it scores x given its labels y, so give them "
            f"(Python: evaluate(..., labels=y), Run.elbo(x, labels=y); Program.labelled(y)), with data that has labels.")

    draw = at = means = posteriors = given = nesting = model = guide = refuse


class _LabelledSource(TraceSource):
    """The program's model and guide with labels y bound; the plate nesting guessed once per program."""

    def __init__(self, module, y: torch.Tensor | None, cache: dict) -> None:
        super().__init__(functools.partial(module.model, y=y), functools.partial(module.guide, y=y),
                         cache.get("nesting"))
        self._cache = cache

    def nesting(self, *args, **kwargs) -> int:
        self._cache["nesting"] = super().nesting(*args, **kwargs)
        return self._cache["nesting"]


def _label_counts(config) -> tuple[int, int]:
    """(data.labels, data.labels_per_class), checked against each other."""
    count, per_class = int(config.data.get("labels", 0)), int(config.data.get("labels_per_class", 0))
    if count and per_class:
        raise ConfigError(f"data.labels = {count} and data.labels_per_class = {per_class}: set one of the two.")
    if per_class < 0:
        raise ConfigError(f"data.labels_per_class must be >= 0 (0: every label shown), got {per_class}.")
    return count, per_class


def _check_training_labels(program, data, config) -> None:
    """A program that learns from labels needs them in the training and test splits, in its classes."""
    if data.train_labels is None or data.test_labels is None:
        raise DataError(
            f"{program.name} learns from labels, and dataset '{config.data['name']}' has none"
            f"{' in its test split' if data.train_labels is not None else ''}: use data with labels (an `array` "
            f"file with a labels array, an `image-folder` of class subfolders, a `csv` with label_column, or one "
            f"of the MNIST family).")
    for split, y in (("training", data.train_labels), ("test", data.test_labels), ("validation", data.valid_labels)):
        if y is not None:
            program.check_labels(y, f"the {split} labels")
    present = torch.unique(data.train_labels).numel()
    if present != program.num_classes:
        raise DataError(
            f"{program.name} has num_classes = {program.num_classes}, and the training labels take "
            f"{present} distinct values: set the program's num_classes to the data's classes.")


def _one_per_datapoint(program, labels, n: int) -> torch.Tensor:
    labels = program.check_labels(labels, "the labels")
    if labels.shape[0] != n:
        raise DataError(f"evaluate: {labels.shape[0]} labels for {n} datapoints: give one per datapoint.")
    return labels
