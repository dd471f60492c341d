"""The trained model: a run folder (or an export) loaded to use, in Python and by the commands.

:func:`load_run` rebuilds a run from its folder (its program, trained parameters and data, each
checked against what the run recorded); :func:`load` is the trained model without its data, from a
run folder or an export; :class:`Run` is that run, with the model to use (``encode``, ``decode``,
``reconstruct``, ``sample``, ``elbo``, ``log_prob``; ``classify`` for a semi-supervised or conditional one;
:meth:`Run.encode_table`, the table ``pyro-vae encode`` writes). How a call takes labels is the
program's label policy's (``labels.py``). :func:`export_run` writes a model to share (parameters as
safetensors, no code, no pickle) and :func:`load_export` reads it back; :func:`finish_run` evaluates
a run on its test set and draws its pictures.

The run folder itself (layout, locks, atomic writes, checkpoint files) is ``runs.py``'s.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import plots
from .config import Config, ProgramConfig, library_program
from .data import (DATASETS, PATH_KEYS, DataSplits, PreparedData, apply_scaling, check_batch, prepare_data,
                   require_finite)
from .distributed import SINGLE, Distributed
from .errors import CheckpointError, ConfigError, DataError, ProgramError, RunDirError
from .evaluation import Evaluation, EvaluationSettings, batch_seed, evaluate
from .files import atomic_write, write_text
from .metrics import ESTIMATES
from .numerics import resolve_device, seeded
from .programs import STOCK, Program, build_model, class_path
from .runs import (BEST, CHECKPOINT, CONFIG, EVALUATION, check_finite_parameters, check_same_data, data_record,
                   load_parameters,
                   read_metrics, read_run_folder, resumable_evaluation, run_lock)


@dataclass
class RunData:
    """A loaded run's data, in the units its API takes: ``train`` and ``test`` as the dataset holds
    them (float32; a CSV table's rows as its file has them, before the run's scaling), with their
    ``train_labels`` and ``test_labels``; ``prepared_test`` (and ``prepared_test_labels``), the test
    set as the program scores it (binarized with the fixed seed under a Bernoulli likelihood, ...):
    what evaluation reads; ``labelled_indices``, the training datapoints whose labels a
    semi-supervised run saw (``data.labels``; None: another run); ``splits``, the dataset's splits."""

    prepared: PreparedData
    scaling: dict | None = None
    labelled: dict | None = None

    @property
    def splits(self) -> DataSplits:
        return self.prepared.splits

    @property
    def train(self) -> torch.Tensor:
        return unscaled(self.splits.train, self.scaling)

    @property
    def test(self) -> torch.Tensor:
        return unscaled(self.splits.test, self.scaling)

    @property
    def train_labels(self) -> torch.Tensor | None:
        return self.splits.train_labels

    @property
    def test_labels(self) -> torch.Tensor | None:
        return self.splits.test_labels

    @property
    def prepared_test(self) -> torch.Tensor:
        return self.prepared.test

    @property
    def prepared_test_labels(self) -> torch.Tensor | None:
        return self.prepared.test_labels

    @property
    def labelled_indices(self) -> torch.Tensor | None:
        if not self.labelled or "indices" not in self.labelled:
            return None
        return torch.tensor(self.labelled["indices"], dtype=torch.long)


def _count(n, what: str) -> int:
    """A number of samples or draws: a whole number >= 1, refused in words otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{what} must be a whole number >= 1, got {n!r}.")
    return int(n)


def unscaled(x: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """x * scale + shift per column: rows in a CSV table's own units from the run's scaled ones (to
    float rounding); x itself where the run has no scaling."""
    if not scaling or scaling.get("kind", "none") == "none":
        return x
    return x * torch.tensor(scaling["scale"], dtype=x.dtype) + torch.tensor(scaling["shift"], dtype=x.dtype)


@dataclass
class Run:
    """A loaded run folder: its config, its model program with trained parameters (``program``;
    ``model`` is the module itself), its checkpoint state; and the trained model to use:
    ``encode``, ``decode``, ``reconstruct``, ``sample``, ``elbo``, ``log_prob`` (and ``classify``)."""

    run_dir: Path
    config: Config
    program: Program
    checkpoint: dict
    device: torch.device
    prepared: PreparedData | None = None  # the data as the program scores it (evaluation sets binarized, ...)
    source: str = CHECKPOINT  # which checkpoint file the parameters came from

    def __repr__(self) -> str:
        data = f", data={self.prepared.splits.name!r}" if self.prepared is not None else ""
        return (f"Run({str(self.run_dir)!r}, program={self.program.name!r}, {self.described}, "
                f"device={self.device.type!r}{data})")

    @property
    def data(self) -> "RunData | None":
        """The run's data in the units this API takes (as the dataset holds it: a CSV table's rows as
        in its file), with the prepared evaluation set beside it (None: loaded without its data)."""
        return None if self.prepared is None else RunData(self.prepared, self.scaling,
                                                          self.checkpoint.get("data", {}).get("labelled"))

    @property
    def scaling(self) -> dict | None:
        """How a CSV table's columns were scaled for this run (x' = (x - shift) / scale), or None."""
        return (self.checkpoint.get("data") or {}).get("scaling")

    @property
    def model(self) -> torch.nn.Module:
        return self.program.module

    @property
    def epoch(self) -> int:
        return self.checkpoint["epoch"]

    @property
    def described(self) -> str:
        """'epoch N', saying when that is the best-validation checkpoint or a snapshot."""
        kind = {BEST: ", best validation ELBO", CHECKPOINT: ""}.get(self.source, f", {self.source}")
        return f"epoch {self.epoch}{kind}"

    # -- using a trained model ---------------------------------------------------------------
    # Inputs are checked here: a tensor or array of shape (batch, *data_shape), or flat (batch, D)
    # when D is the data's size (reshaped), or (batch, H, W) for one-channel images; uint8 as 8-bit
    # levels (/255), other integers as counts; values the program's data contract accepts; for a
    # run of a CSV table, rows as the file holds them (the run applies its own scaling). Scores see
    # the data as evaluation does (e.g. binarized with the fixed seed).

    def inputs(self, x, scored: bool = False) -> torch.Tensor:
        """``x`` as the program takes it (see above): on the run's device, float32, shaped
        (batch, *data_shape), finite, scaled as the run's CSV table was; with ``scored``, checked
        against the data contract and prepared as evaluation prepares data (e.g. binarized with the
        fixed evaluation seed)."""
        shape = tuple(self.program.data_shape)
        if not torch.is_tensor(x):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError) as e:
                raise DataError(f"the input is a {type(x).__name__}, not an array of numbers: {e}.") from None
        if x.device.type == "meta":
            raise DataError("the input is a tensor on the meta device, which holds no values: give data (a tensor on "
                            "the CPU or the run's device, or an array).")
        if x.dim() >= 1 and x.shape[0] == 0:
            raise DataError(f"the input holds no datapoints (shape {tuple(x.shape)}): give at least one.")
        if x.dim() == 2 and len(shape) > 1 and x.shape[1] == math.prod(shape):
            x = x.reshape(-1, *shape)  # a flat batch of the right size
        elif x.dim() == len(shape) and len(shape) == 3 and shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:
            x = x.unsqueeze(1)  # one-channel images given as (batch, H, W)
        if x.is_complex():
            raise DataError(f"the input holds complex numbers ({x.dtype}); the model takes real values.")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # (other integers: counts, as they are)
        x = x.to(self.device)
        check_batch(x, shape, "input")
        require_finite(x, "input")
        if self.scaling:
            x = apply_scaling(x, self.scaling)
        if scored:
            self.program.check_data(x, "input")
            x = self.program.contract.prepare_eval_set(x)
        return x

    def given(self, labels=None) -> Program:
        """The program these calls run: given ``labels`` (integer classes, one per datapoint) where
        it takes them; a conditional program refuses to run without them."""
        return self.program.policy.given(self.program, labels)

    def _site(self, site: str | None = None) -> str:
        shapes = self.program.latent_shapes
        if site is not None:
            if site not in shapes:
                raise ProgramError(f"{self.program.name} has no latent site {site!r}; its sites: {', '.join(shapes)}.")
            return site
        if len(shapes) != 1:
            raise ProgramError(f"{self.program.name} has {len(shapes)} latent sites ({', '.join(shapes)}): name one, "
                               f"encode(x, site=...), or take them all with encode_sites(x); decode takes a dict by "
                               f"site.")
        return next(iter(shapes))

    @torch.no_grad()
    def encode(self, x, draws: int = 256, seed: int | None = None, site: str | None = None, labels=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x)'s mean and standard deviation per latent coordinate, each (batch, *event): exact
        where q's family has them (the diagonal Gaussian, a categorical's class probabilities), else
        from ``draws`` draws. A program of several latent sites: ``site`` names one (see
        :meth:`encode_sites`). ``labels``: see :meth:`given`."""
        return self.encode_sites(x, draws, seed, labels)[self._site(site)]

    @torch.no_grad()
    def encode_sites(self, x, draws: int = 256, seed: int | None = None, labels=None
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(mean, standard deviation) of q per latent site, in the guide's order; a site after the
        first is q given one draw of the sites before it (its q(z_1|x, z_2) at that z_2). x is
        encoded as evaluation sees it (binarized with the fixed seed under a Bernoulli likelihood:
        the inputs q was trained on)."""
        x = self.inputs(x, scored=True)
        out = {}
        with seeded(self.config.seed if seed is None else seed, self.device), self.given(labels).source.given(x) as at_x:
            latents = at_x.draw(1).latents
            for name, latent in latents.items():
                try:
                    out[name] = (latent.q.mean, latent.q.stddev)
                except NotImplementedError:
                    z = at_x.draw(draws).latents[name].value
                    out[name] = (z.mean(0), z.std(0))
        return out

    @torch.no_grad()
    def decode(self, z, pixels: str = "mean", labels=None) -> torch.Tensor:
        """Images for latents z (batch, *event), or a dict of them by site: E[x|z], or draws
        x ~ p(x|z) with ``pixels = "sample"`` (or where the mean has no closed form). ``labels``:
        see :meth:`given` (a conditional program's p(x|z, y))."""
        program = self.given(labels)
        z = {k: self._latent(k, v) for k, v in z.items()} if isinstance(z, dict) else {self._site(): self._latent(
            self._site(), z)}
        return program.decode(z, pixels)

    def _latent(self, site: str, z) -> torch.Tensor:
        """Latent values z of ``site`` for decode, checked: (batch, *event) of the site's shape, finite."""
        shapes = self.program.probing(1).latent_shapes if self.program.policy.takes_labels else \
            self.program.latent_shapes
        if site not in shapes:
            raise ProgramError(f"{self.program.name} has no latent site {site!r}; its sites: {', '.join(shapes)}.")
        z = torch.as_tensor(np.asarray(z) if not torch.is_tensor(z) else z).to(self.device).float()
        event = tuple(shapes[site])
        if z.dim() == len(event):
            z = z.unsqueeze(0)  # one latent point
        if tuple(z.shape[1:]) != event:
            raise DataError(f"z for site {site!r} has shape {tuple(z.shape)}; the model's latent is "
                            f"(batch, {', '.join(map(str, event))}): give points of that size (e.g. run.encode(x)[0], "
                            f"or torch.randn(n, {', '.join(map(str, event))})).")
        require_finite(z, f"z of site {site!r}")
        return z

    def reconstruct(self, x, pixels: str = "mean", labels=None) -> torch.Tensor:
        """decode(E_q[z|x]): the images x reconstructed through the posterior mean."""
        return self.decode(self.encode(x, labels=labels)[0], pixels, labels)

    @torch.no_grad()
    def sample(self, n: int | None = None, seed: int | None = None, pixels: str = "mean", labels=None) -> torch.Tensor:
        """n images decoded from z ~ p(z); a program that takes labels draws x ~ p(x|z, y) for the
        classes ``labels`` (one image each; required by a conditional program)."""
        program = self.given(labels)
        if labels is not None:
            n = len(labels) if n is None else n
            if n != len(labels):
                raise ConfigError(f"sample(n={n}, labels=...) with {len(labels)} labels: one image per label.")
        n = _count(n, "sample(n)")
        with seeded(self.config.seed if seed is None else seed, self.device):
            return program.decode(program.prior_draws(n), pixels)

    @torch.no_grad()
    def elbo(self, x, samples: int = 1, seed: int | None = None, labels=None) -> torch.Tensor:
        """The ELBO per datapoint, in nats (``samples`` draws of z; the KL in closed form where it has
        one); given ``labels`` for a program that takes them (:meth:`given`). A semi-supervised
        program without labels: the ELBO with y summed over its classes exactly (one z per class)."""
        samples = _count(samples, "samples")
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return self.program.policy.elbo(self.program, x, labels, samples, ESTIMATES)

    @torch.no_grad()
    def evidence(self, x, samples: int = 1000, seed: int | None = None, labels=None) -> dict[str, torch.Tensor]:
        """Per datapoint, from one pass of K = ``samples`` draws z ~ q(z|x): ``elbo`` (the mean of the K
        draws' ELBO) and ``log_px`` (importance sampled), each with its standard error (``elbo_stderr``,
        ``log_px_stderr``), in nats; the gap log p(x) - ELBO between them estimates KL(q(z|x) ||
        p(z|x)). Given ``labels`` as :meth:`elbo` is (a semi-supervised program without labels: y
        summed exactly, one draw of z per class for the ELBO)."""
        samples = _count(samples, "samples")
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return self.program.policy.evidence(self.program, x, labels, samples, self.config.eval.chunk_pairs,
                                                ESTIMATES)

    @torch.no_grad()
    def classify(self, x, samples: int = 100, seed: int | None = None, prior=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the predicted class, the class probabilities per datapoint (batch, C)). A semi-supervised
        program: its classifier q(y|x) (``samples``, ``seed`` and ``prior`` unused). A conditional
        program, p(x|y) only: Bayes' rule, p(y|x) proportional to p(x|y) p(y), log p(x|y) importance
        sampled with K = ``samples`` draws per class and ``prior`` p(y) uniform unless given (C
        probabilities)."""
        samples = _count(samples, "samples")
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return self.program.policy.classify(self.program, x, ESTIMATES, samples=samples,
                                                chunk_pairs=self.config.eval.chunk_pairs, prior=prior)

    @torch.no_grad()
    def log_prob(self, x, samples: int = 1000, seed: int | None = None, labels=None) -> dict[str, torch.Tensor]:
        """Importance-sampled log p(x) per datapoint, in nats, with K = ``samples`` draws from q(z|x):
        ``log_px``, its standard error ``stderr`` and the weights' effective sample size ``ess``
        (given ``labels``: log p(x|y) of a conditional program, log p(x, y) of a semi-supervised one).
        A semi-supervised program without labels: log p(x) = log sum_y p(x, y), y summed exactly and
        K draws of z per class (``log_px`` and ``stderr``, as evaluation reports it)."""
        samples = _count(samples, "samples")
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return self.program.policy.log_prob(self.program, x, labels, samples, self.config.eval.chunk_pairs,
                                                ESTIMATES)

    def encode_table(self, x, labels=None, samples: int | None = None, seed: int | None = None,
                     batch_size: int | None = None, progress: bool = False, what: str = "the data") -> "EncodedTable":
        """What ``pyro-vae encode`` writes, per datapoint of x: q(z|x)'s mean and scale per latent
        site, the ELBO and the importance-sampled log p(x) from the same K = ``samples`` draws
        (default eval.samples), each with its standard error, in nats; and what the program's label
        policy adds (a conditional program's z and scores given ``labels``, which it needs; a
        semi-supervised one's q(y|x), its argmax and z there, the scores with y summed exactly). Batch b of ``batch_size`` (default
        eval.batch_size) runs under the evaluation's seed of batch b, so a batch's numbers do not
        depend on the others. ``what`` names the data in messages."""
        from tqdm.auto import tqdm

        policy = self.program.policy
        samples = _count(self.config.eval.samples if samples is None else samples, "samples")
        seed = self.config.seed if seed is None else seed
        size = batch_size or self.config.eval.batch_size
        labels = None if labels is None else torch.as_tensor(labels)
        given = policy.encode_labels(self.program, labels, what)
        sites = policy.latent_sites(self.program)
        parts: list[dict] = []
        for b in tqdm(range(0, len(x), size), disable=not progress, unit="batch", leave=False,
                      desc=f"encoding, K = {samples}"):
            yb = given[b : b + size] if given is not None else None
            parts.append(policy.encode_batch(self, x[b : b + size], yb, samples, batch_seed(seed, b // size)))
        return EncodedTable.of(parts, sites, labels, samples, policy.wording, what)


@dataclass
class EncodedTable:
    """``Run.encode_table``'s result: ``columns`` by name, each a NumPy array with one row per
    datapoint (vectors: a column each of their coordinates in the CSV), in the order they are
    written; ``sites`` the latent sites' names; ``description``, one sentence of what is in it."""

    columns: dict[str, np.ndarray]
    sites: list[str]
    description: str

    @classmethod
    def of(cls, parts: list[dict], sites: list[str], labels, samples: int, wording, what: str) -> "EncodedTable":
        one = len(sites) == 1  # one latent site: "mean", "scale"; several: "mean_<site>", "scale_<site>"
        columns: dict[str, list] = {}

        def add(name: str, value: torch.Tensor, vector: bool = False) -> None:
            flat = value.reshape(value.shape[0], -1) if vector or value.dim() > 1 else value
            columns.setdefault(name, []).append(flat.cpu())

        for part in parts:
            for site in sites:
                mean, scale = part["sites"][site]
                add("mean" if one else f"mean_{site}", mean, vector=True)
                add("scale" if one else f"scale_{site}", scale, vector=True)
            for name, value in part.items():
                if name != "sites":
                    add(name, value)
        table = {k: torch.cat(v).numpy() for k, v in columns.items()}
        if labels is not None:
            table["label"] = labels.cpu().numpy()
        sizes = ", ".join(f"{site} {table['mean' if one else f'mean_{site}'].shape[1]}" for site in sites)
        description = (f"{len(table['elbo'])} datapoints of {what}: posterior mean and scale{wording.encode_given} "
                       f"(per site: {sizes}), {wording.encode_score} (K = {samples}{wording.per_class}, with its "
                       f"standard error), nats")
        return cls(table, sites, description)

    def write_npz(self, f) -> None:
        np.savez(f, **self.columns)

    def write_csv(self, f) -> None:
        """One row per datapoint: its index, its classes (label, predicted), the scores, then each
        vector's coordinates (mean_0, mean_1, ..., scale_0, ...)."""
        import csv
        import io

        classes = [k for k in ("label", "predicted") if k in self.columns]
        scores = [k for k in ("elbo", "log_px", "log_px_stderr", "elbo_stderr") if k in self.columns]  # (new last)
        vectors = [k for k, v in self.columns.items() if v.ndim > 1]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["index", *classes, *scores, *(f"{k}_{i}" for k in vectors for i in range(self.columns[k].shape[1]))])
        for i in range(len(self.columns["elbo"])):
            writer.writerow([i, *(int(self.columns[k][i]) for k in classes), *(f"{self.columns[k][i]:.6g}" for k in scores),
                             *(f"{v:.6g}" for k in vectors for v in self.columns[k][i])])
        f.write(text.getvalue().encode())


def load_run(run_dir: Path | str, device: str | None = None, with_data: bool = True,
             checkpoint: str = "auto", *, trust_code: bool = False, model: torch.nn.Module | None = None,
             splits: DataSplits | None = None) -> Run:
    """Rebuild a run from its folder: config.toml + a checkpoint (checked against each other);
    ``checkpoint`` as in :func:`selected_checkpoint`, or a path to a snapshot.

    A run of a user program imports its module only with ``trust_code=True`` (and refuses a source
    file changed since, naming it); or pass ``model``, an instance of the run's program class,
    to receive the trained parameters (how a program defined in a script, or one whose options
    the config could not record, is loaded).

    The data is the config's dataset, rebuilt, or ``splits`` (data trained on from Python must be
    given so); either is refused unless it is the data the run trained on (its fingerprint).

    An export folder (:func:`export_run`) loads too, its data given as ``splits`` (an export holds
    none; checked against the fingerprint it records)."""
    run_dir = Path(run_dir)
    if is_export(run_dir):
        return _export_with_data(run_dir, device, with_data, model, splits)
    config, path, state = read_run_folder(run_dir, checkpoint)
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    if with_data:
        splits = splits or _recorded_data(config, run_dir)
        check_same_data(state, data_record(splits, given=False), run_dir)
    else:
        splits = None
    shape = splits.event_shape if splits is not None else tuple(state["data_shape"])
    program = _run_program(config, shape, run_dir, dev, model, trust_code)
    load_parameters(program.module, state["model"], path)
    data = prepare_data(config, program, dev, splits) if with_data else None
    return Run(run_dir, config, program, state, dev, data, path.name)


def _recorded_data(config: Config, run_dir: Path) -> DataSplits:
    """The data a run's config names, loaded; where it cannot be (a file moved, or named relative to
    a directory the command is not run from), the refusal says which run recorded what, and the fix."""
    try:
        return DATASETS.build(config.data, "data").load()
    except DataError as e:
        recorded = ", ".join(f"data.{k} = {v!r}" for k, v in config.data.items() if k in PATH_KEYS and v)
        if not recorded:
            raise
        raise DataError(f"{e} ({run_dir} recorded {recorded}; relative paths are read from the current directory, "
                        f"{Path.cwd()}.) Give the data it trained on with --data PATH (Python: load_run(..., "
                        f"splits=...)): it is checked against the run's fingerprint.") from None


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an export (its weights as safetensors, no checkpoint)."""
    return (Path(folder) / EXPORT_WEIGHTS).is_file() and not (Path(folder) / CHECKPOINT).is_file()


def _export_with_data(folder: Path, device: str | None, with_data: bool, model, splits: DataSplits | None) -> Run:
    """An export loaded as a run: with the data given for it (refused without: an export holds none)."""
    run = load_export(folder, device, model=model)
    if not with_data:
        return run
    if splits is None:
        raise RunDirError(
            f"{folder} is an export (model.safetensors, config.toml, export.json: a trained model to share, without "
            f"its data): give the data to score with --data PATH (Python: load_run(..., splits=...)), checked against "
            f"the fingerprint the export records; or use the run folder it came from.")
    check_same_data({"data": run.checkpoint.get("data") or None}, data_record(splits, given=False), folder)
    run.prepared = prepare_data(run.config, run.program, run.device, splits)
    return run


def load(run_dir: Path | str, device: str | None = None, checkpoint: str = "auto", *, trust_code: bool = False,
         model: torch.nn.Module | None = None) -> Run:
    """A trained model to use (``pyro_vae.load(RUN_DIR).encode(x)``): :func:`load_run` without its
    data; or an exported model (:func:`export_run`'s folder, loaded by :func:`load_export`)."""
    if is_export(Path(run_dir)):
        return load_export(run_dir, device, model=model)
    return load_run(run_dir, device, with_data=False, checkpoint=checkpoint, trust_code=trust_code, model=model)


# ---------------------------------------------------------------------------------------------
# Exported models: weights as safetensors, the config as TOML, no code and no pickle

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_INFO = "export.json"
EXPORT_FORMAT = 2  # 2: export.json records every file's SHA-256 and its own


def export_run(run_dir: Path | str, out: Path | str, checkpoint: str = "auto", overwrite: bool = False) -> Path:
    """Write a trained model to share: ``model.safetensors`` (the parameters, a format that holds
    tensors only: loading it runs no code, unlike a pickled checkpoint), ``config.toml`` (the run's
    resolved config: the model it rebuilds) and ``export.json`` (data shape, epoch, what it trained
    on, and the SHA-256 of each file and of its own fields, so that the export is tamper-evident as a
    whole: a config edited after the export is refused on load, as are changed weights). A checkpoint
    holding NaN or infinite parameters is refused, as ``evaluate`` refuses it. :func:`load` reads the
    folder back. Reads the checkpoint only; no program is built, so a user program's code is not
    imported."""
    from safetensors.torch import save

    run_dir, out = Path(run_dir), Path(out)
    config, path, state = read_run_folder(run_dir, checkpoint)
    check_finite_parameters(state["model"], path)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"{out} exists and is not empty: choose a new --out, or pass --overwrite to replace "
                              f"the export there.")
        if not (out / EXPORT_INFO).is_file():
            raise RunDirError(f"{out} is not an export folder (no {EXPORT_INFO}): pyro-vae replaces only an export.")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state["model"].items()}
    weights = save(tensors, metadata={"format": str(EXPORT_FORMAT)})
    config_text = config.to_toml()
    info = {"format": EXPORT_FORMAT, "data_shape": list(state["data_shape"]), "epoch": state["epoch"],
            "checkpoint": path.name, "run_dir": str(run_dir.resolve()), "data": state.get("data"),
            "sha256": hashlib.sha256(weights).hexdigest(),
            "files": {EXPORT_WEIGHTS: hashlib.sha256(weights).hexdigest(),
                      CONFIG: hashlib.sha256(config_text.encode()).hexdigest()}}
    info["info_sha256"] = _info_digest(info)
    atomic_write(out / EXPORT_WEIGHTS, lambda f: f.write(weights))
    write_text(out / CONFIG, config_text)
    write_text(out / EXPORT_INFO, json.dumps(info, indent=2) + "\n")
    return out


def _info_digest(info: dict) -> str:
    """SHA-256 of export.json's fields (all but this digest itself), canonically serialized."""
    fields = {k: v for k, v in info.items() if k != "info_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def read_export_info(folder: Path) -> dict:
    """export.json of an export folder, parsed and checked: its fields whole (the digest of format 2
    covers them), a format this pyro-vae reads; refused in words otherwise, naming the file."""
    path = folder / EXPORT_INFO
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}): the export is damaged or was edited. Export the "
                              f"run again (pyro-vae export RUN --out DIR).") from None
    if not isinstance(info, dict) or not isinstance(info.get("format"), int):
        raise CheckpointError(f"{path} is not a pyro-vae export's record (no format field). Export the run again.")
    if info["format"] > EXPORT_FORMAT:
        raise CheckpointError(f"{folder} is an export of format {info['format']}, newer than this pyro-vae reads "
                              f"({EXPORT_FORMAT}): upgrade pyro-vae.")
    needed = ("data_shape", "epoch", "sha256") + (("files", "info_sha256") if info["format"] >= 2 else ())
    missing = [k for k in needed if k not in info]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: the record was edited or damaged. Export the run "
                              f"again.")
    if info["format"] >= 2 and _info_digest(info) != info["info_sha256"]:
        raise CheckpointError(f"{path} was changed after the export (its fields do not match their recorded "
                              f"SHA-256): refusing to load a model whose record may not be its own. Export the run "
                              f"again.")
    return info


def _verified(folder: Path, name: str, info: dict) -> bytes:
    """The bytes of an export's file ``name``, checked against the SHA-256 export.json records for it."""
    data = (folder / name).read_bytes()
    recorded = info.get("files", {}).get(name, info["sha256"] if name == EXPORT_WEIGHTS else None)
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise CheckpointError(f"{folder / name} does not match the SHA-256 recorded in {EXPORT_INFO}: the file "
                              f"changed (edited, or damaged) since the export, and the parameters mean what that "
                              f"file said when it was written. Export the run again.")
    return data


def load_export(folder: Path | str, device: str | None = None, *, model: torch.nn.Module | None = None) -> Run:
    """A model :func:`export_run` wrote: the program its config names rebuilt (the stock VAE or a
    library program; a user program only as the object ``model``, since an export never imports
    code), its parameters read from safetensors; every file checked against the SHA-256 export.json
    records for it (format 1 exports recorded the weights' only)."""
    from safetensors.torch import load

    folder = Path(folder)
    for name in (CONFIG, EXPORT_INFO, EXPORT_WEIGHTS):
        if not (folder / name).is_file():
            raise RunDirError(f"{folder} is not a pyro-vae export (no {name}); `pyro-vae export RUN --out DIR` writes one.")
    info = read_export_info(folder)
    data = _verified(folder, EXPORT_WEIGHTS, info)  # (read once: checked, then parsed)
    _verified(folder, CONFIG, info)
    config = Config.load(folder / CONFIG)
    shape = tuple(info["data_shape"])
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    try:
        program = _run_program(config, shape, folder, dev, model, trust_code=False)
    except ProgramError:
        if model is not None or not isinstance(config.model, ProgramConfig) or library_program(config.model.program):
            raise
        raise ProgramError(f"{folder} is an export of a model program of your own ({config.model.program}), and an "
                           f"export never imports code (so --trust-code does not apply to it): load it in Python "
                           f"with pyro_vae.load({str(folder)!r}, model=YourProgram(...)), given the program's "
                           f"object, or use the run folder it came from.") from None
    load_parameters(program.module, {k: v.to(dev) for k, v in load(data).items()}, folder / EXPORT_WEIGHTS)
    state = {"epoch": info["epoch"], "data_shape": info["data_shape"], "data": info.get("data") or {}}
    return Run(folder, config, program, state, dev, None, EXPORT_WEIGHTS)


def _run_program(config: Config, shape: tuple[int, ...], run_dir: Path, device: torch.device,
                 model: torch.nn.Module | None, trust_code: bool) -> Program:
    """The program a run folder's config names, on ``device``: the object ``model`` (checked to be
    of the run's class) or the one the config builds (user code only with ``trust_code``)."""
    if model is not None:
        _require_run_program(config, model, run_dir)
        program = Program(model, data_shape=shape)
    else:
        program = build_model(config, shape, trust_code=trust_code, where=str(run_dir))
    program.module.to(device)
    return program


def _require_run_program(config: Config, model: torch.nn.Module, run_dir: Path) -> None:
    """Refuse a model object of another class than the run's (a script's class, recorded as
    ``__main__:Name``, matches a class of that name imported from its module)."""
    named = config.model.program
    given = class_path(type(model)) if Program(model).user_code else STOCK
    same_script_class = named.startswith("__main__:") and named.partition(":")[2] == type(model).__qualname__
    if named != given and not same_script_class:
        raise ProgramError(f"{run_dir} was trained with model program {named!r}; the model given is a {given!r}.")

def finish_run(run: Run, log: Callable[[str], None] = print, samples: int | None = None,
               dist: Distributed = SINGLE, progress: bool = False) -> Evaluation:
    """Final test evaluation (with importance-sampled log p(x)) and the run's pictures (rank 0 writes)."""
    cfg = run.config
    k = cfg.eval.samples if samples is None else samples
    if dist.main:
        log(f"evaluating log p(x) on {run.prepared.test.shape[0]} test datapoints with K = {k} importance samples ...")
    with run_lock(run.run_dir, "evaluate") if dist.main else nullcontext(), \
            resumable_evaluation(run.run_dir, EVALUATION, dist) as store:
        result = evaluate(run.program, run.prepared.test, EvaluationSettings.of(cfg, k), dist=dist, store=store,
                          progress=progress, labels=run.program.policy.scored_labels(run.prepared.test_labels))
        if dist.main:
            write_evaluation(run, result, extra=task_reports(run, result))
            plots.run_pictures(run, result, read_metrics(run.run_dir))
    return result


def task_reports(run: Run, result: Evaluation) -> dict:
    """What a run of named features reports beyond the bounds, written into its folder: features.txt
    (the columns it trained on, one a line: what encode --data takes by name) and, for a topic model
    (a decoder with ``topic_words``), topics.txt (each topic's 10 top words) with, in evaluation.json,
    the topics' coherence (NPMI of the 10 top words over the stated reference corpus: the test
    documents' co-occurrence) and the per-word perplexity of the test documents from the
    importance-sampled log p(x), beside the unigram model's of the training documents (the floor)."""
    splits, out = run.prepared.splits, {}
    names = getattr(splits, "feature_names", None)
    if names:
        write_text(run.run_dir / "features.txt", "".join(f"{n}\n" for n in names))
    out |= decomposition_report(run)
    scores = topic_scores(run.program, splits, result.log_px, result.samples)
    if scores is not None:
        write_text(run.run_dir / "topics.txt", "\n".join(scores.pop("table")) + "\n")
        out["topics"] = scores
    return out


def topic_scores(program, splits, log_px, samples: int) -> dict | None:
    """A topic model's scores (a program whose decoder has ``topic_words``; None otherwise): the 10 top
    words of each topic (``table``), their coherence (NPMI over the test documents' co-occurrence) and
    the test documents' per-word perplexity from the importance-sampled ``log_px``, beside the unigram
    model's of the training documents (the floor)."""
    from . import topics

    vae = getattr(program, "vae", None)
    decoder = getattr(vae, "decoder", None)
    if decoder is None or not hasattr(decoder, "topic_words") or log_px is None:
        return None
    names = getattr(splits, "feature_names", None)
    weights = decoder.topic_words().detach().cpu()
    vocabulary = list(names) if names else [str(i) for i in range(weights.shape[1])]
    test = splits.held("test")
    reference = test.to_scipy() if hasattr(test, "to_scipy") else test
    coherence = topics.coherence(weights, reference, n=10)
    train = splits.held("train")
    unigram = topics.unigram_log_probability(train.to_scipy() if hasattr(train, "to_scipy") else train, reference)
    return {
        "table": topics.topic_words_table(weights, vocabulary, 10),
        "npmi": coherence["npmi"], "npmi_per_topic": coherence["per_topic"], "top_words": 10,
        "npmi_reference_corpus": f"the {len(test)} test documents (document co-occurrence; a never co-occurring "
                                 f"pair scores -1)",
        "perplexity": topics.perplexity(log_px, reference),
        "perplexity_from": f"importance-sampled log p(x), K = {samples}, multinomial coefficient removed",
        "unigram_perplexity": topics.perplexity(unigram, reference)}


def decomposition_report(run: Run) -> dict:
    """A disentangling objective's run (``reports_decomposition``: beta, beta-tc, factor): the KL's
    decomposition (index-code MI, total correlation, dimension-wise KL; ``disentanglement.kl_decomposition``)
    over the first 2,000 test datapoints' exact aggregate posterior, for evaluation.json; {} otherwise."""
    from .config import OBJECTIVES
    from .disentanglement import SCORE_POINTS, decomposition_or_reason

    objective = run.config.train.objective
    if not getattr(OBJECTIVES.get(objective["name"]), "reports_decomposition", False):
        return {}
    parts = decomposition_or_reason(run.program, run.prepared.test[:SCORE_POINTS], seed=run.config.seed,
                                    batch_size=run.config.eval.batch_size)
    return {"kl_decomposition": {**parts, "units": "nats per datapoint", "over": "the test datapoints' own aggregate "
                                 "posterior q(z) = (1/M) sum_n q(z|x_n), one draw each"}}


def write_evaluation(run: Run, result: Evaluation, name: str = EVALUATION, extra: dict | None = None) -> Path:
    summary = {"epoch": run.epoch, "checkpoint": run.source, "dataset": run.config.data["name"], "split": "test",
               "model_program": run.config.model.program, **result.summary(), **(extra or {})}
    return write_text(run.run_dir / name, json.dumps(summary, indent=2) + "\n")
