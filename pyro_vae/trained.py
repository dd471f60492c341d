"""The trained model: a run folder (or an export) loaded to use, in Python and by the commands.

:func:`load_run` rebuilds a run from its folder (its program, trained parameters and data, each
checked against what the run recorded); :func:`load` is the trained model without its data, from a
run folder or an export; :class:`Run` is that run, with the model to use (``encode``, ``decode``,
``reconstruct``, ``sample``, ``elbo``, ``log_prob``; ``classify`` for a semi-supervised one;
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
from .config import Config
from .data import DATASETS, DataSplits, PreparedData, check_batch, prepare_data, require_finite
from .distributed import SINGLE, Distributed
from .errors import CheckpointError, ConfigError, DataError, ProgramError, RunDirError
from .evaluation import Evaluation, EvaluationSettings, batch_seed, evaluate
from .files import atomic_write, write_text
from .metrics import ESTIMATES
from .numerics import resolve_device, seeded
from .programs import STOCK, Program, build_model, class_path
from .runs import (BEST, CHECKPOINT, CONFIG, EVALUATION, check_same_data, data_record, load_parameters,
                   read_metrics, read_run_folder, resumable_evaluation, run_lock)


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
    data: PreparedData | None = None
    source: str = CHECKPOINT  # which checkpoint file the parameters came from

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
    # when D is the data's size (reshaped); uint8 as 8-bit levels (/255); values the program's data
    # contract accepts. Scores see the data as evaluation does (e.g. binarized with the fixed seed).

    def inputs(self, x, scored: bool = False) -> torch.Tensor:
        """``x`` as the program takes it (see above): on the run's device, float32, shaped
        (batch, *data_shape), finite; with ``scored``, checked against the data contract and
        prepared as evaluation prepares data (e.g. binarized with the fixed evaluation seed)."""
        shape = tuple(self.program.data_shape)
        if not torch.is_tensor(x):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError) as e:
                raise DataError(f"the input is a {type(x).__name__}, not an array of numbers: {e}.") from None
        if x.dim() == 2 and len(shape) > 1 and x.shape[1] == math.prod(shape):
            x = x.reshape(-1, *shape)  # a flat batch of the right size
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point() or x.dtype == torch.bool:
            x = x.float()
        x = x.to(self.device)
        check_batch(x, shape, "input")
        require_finite(x, "input")
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
        if isinstance(z, dict):  # every latent site by name
            return program.decode({k: torch.as_tensor(v, device=self.device).float() for k, v in z.items()}, pixels)
        return program.decode({self._site(): torch.as_tensor(z, device=self.device).float()}, pixels)

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
        with seeded(self.config.seed if seed is None else seed, self.device):
            return program.decode(program.prior_draws(n), pixels)

    @torch.no_grad()
    def elbo(self, x, samples: int = 1, seed: int | None = None, labels=None) -> torch.Tensor:
        """The ELBO per datapoint, in nats (``samples`` draws of z; the KL in closed form where it has
        one); given ``labels`` for a program that takes them (:meth:`given`). A semi-supervised
        program without labels: the ELBO with y summed over its classes exactly (one z per class)."""
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
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return self.program.policy.evidence(self.program, x, labels, samples, self.config.eval.chunk_pairs,
                                                ESTIMATES)

    @torch.no_grad()
    def classify(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """A semi-supervised program's classifier q(y|x): (argmax_y q(y|x), q(y|x) per class (batch, C))."""
        return self.program.policy.classify(self.program, self.inputs(x, scored=True), ESTIMATES)

    @torch.no_grad()
    def log_prob(self, x, samples: int = 1000, seed: int | None = None, labels=None) -> dict[str, torch.Tensor]:
        """Importance-sampled log p(x) per datapoint, in nats, with K = ``samples`` draws from q(z|x):
        ``log_px``, its standard error ``stderr`` and the weights' effective sample size ``ess``
        (given ``labels``: log p(x|y) of a conditional program, log p(x, y) of a semi-supervised one).
        A semi-supervised program without labels: log p(x) = log sum_y p(x, y), y summed exactly and
        K draws of z per class (``log_px`` and ``stderr``, as evaluation reports it)."""
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
        samples = self.config.eval.samples if samples is None else samples
        if samples < 1:
            raise ConfigError(f"samples must be >= 1, got {samples}.")
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
    given so); either is refused unless it is the data the run trained on (its fingerprint)."""
    run_dir = Path(run_dir)
    config, path, state = read_run_folder(run_dir, checkpoint)
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    if with_data:
        splits = splits or DATASETS.build(config.data, "data").load()
        check_same_data(state, data_record(splits, given=False), run_dir)
    else:
        splits = None
    shape = splits.event_shape if splits is not None else tuple(state["data_shape"])
    program = _run_program(config, shape, run_dir, dev, model, trust_code)
    load_parameters(program.module, state["model"], path)
    data = prepare_data(config, program, dev, splits) if with_data else None
    return Run(run_dir, config, program, state, dev, data, path.name)


def load(run_dir: Path | str, device: str | None = None, checkpoint: str = "auto", *, trust_code: bool = False,
         model: torch.nn.Module | None = None) -> Run:
    """A trained model to use (``pyro_vae.load(RUN_DIR).encode(x)``): :func:`load_run` without its
    data; or an exported model (:func:`export_run`'s folder, loaded by :func:`load_export`)."""
    if (Path(run_dir) / EXPORT_WEIGHTS).is_file() and not (Path(run_dir) / CHECKPOINT).is_file():
        return load_export(run_dir, device, model=model)
    return load_run(run_dir, device, with_data=False, checkpoint=checkpoint, trust_code=trust_code, model=model)


# ---------------------------------------------------------------------------------------------
# Exported models: weights as safetensors, the config as TOML, no code and no pickle

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_INFO = "export.json"
EXPORT_FORMAT = 1


def export_run(run_dir: Path | str, out: Path | str, checkpoint: str = "auto", overwrite: bool = False) -> Path:
    """Write a trained model to share: ``model.safetensors`` (the parameters, a format that holds
    tensors only: loading it runs no code, unlike a pickled checkpoint), ``config.toml`` (the run's
    resolved config: the model it rebuilds) and ``export.json`` (data shape, epoch, what it trained
    on, the weights' SHA-256). :func:`load` reads the folder back. Reads the checkpoint only; no
    program is built, so a user program's code is not imported."""
    from safetensors.torch import save

    run_dir, out = Path(run_dir), Path(out)
    config, path, state = read_run_folder(run_dir, checkpoint)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"{out} exists and is not empty: choose a new --out, or pass --overwrite to replace "
                              f"the export there.")
        if not (out / EXPORT_INFO).is_file():
            raise RunDirError(f"{out} is not an export folder (no {EXPORT_INFO}): pyro-vae replaces only an export.")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state["model"].items()}
    weights = out / EXPORT_WEIGHTS
    data = save(tensors, metadata={"format": str(EXPORT_FORMAT)})
    atomic_write(weights, lambda f: f.write(data))
    info = {"format": EXPORT_FORMAT, "data_shape": list(state["data_shape"]), "epoch": state["epoch"],
            "checkpoint": path.name, "run_dir": str(run_dir), "data": state.get("data"),
            "sha256": hashlib.sha256(data).hexdigest()}
    write_text(out / CONFIG, config.to_toml())
    write_text(out / EXPORT_INFO, json.dumps(info, indent=2) + "\n")
    return out


def load_export(folder: Path | str, device: str | None = None, *, model: torch.nn.Module | None = None) -> Run:
    """A model :func:`export_run` wrote: the program its config names rebuilt (the stock VAE or a
    library program; a user program only as the object ``model``, since an export never imports
    code), its parameters read from safetensors (checked against the recorded SHA-256)."""
    from safetensors.torch import load

    folder = Path(folder)
    for name in (CONFIG, EXPORT_INFO, EXPORT_WEIGHTS):
        if not (folder / name).is_file():
            raise RunDirError(f"{folder} is not a pyro-vae export (no {name}); `pyro-vae export RUN --out DIR` writes one.")
    info = json.loads((folder / EXPORT_INFO).read_text())
    if info.get("format", 0) > EXPORT_FORMAT:
        raise CheckpointError(f"{folder} is an export of format {info['format']}, newer than this pyro-vae reads "
                              f"({EXPORT_FORMAT}): upgrade pyro-vae.")
    weights = folder / EXPORT_WEIGHTS
    data = weights.read_bytes()  # (read once: checked, then parsed)
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise CheckpointError(f"{weights} does not match the SHA-256 recorded in {EXPORT_INFO}: the file changed "
                              f"or is damaged. Export the run again.")
    config = Config.load(folder / CONFIG)
    shape = tuple(info["data_shape"])
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    try:
        program = _run_program(config, shape, folder, dev, model, trust_code=False)
    except ProgramError as e:
        if model is not None:
            raise
        raise ProgramError(f"{e} An export never imports code: load it with pyro_vae.load({str(folder)!r}, "
                           f"model=YourProgram(...)) given the program's object.") from None
    load_parameters(program.module, {k: v.to(dev) for k, v in load(data).items()}, weights)
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
        log(f"evaluating log p(x) on {run.data.test.shape[0]} test datapoints with K = {k} importance samples ...")
    with run_lock(run.run_dir, "evaluate") if dist.main else nullcontext(), \
            resumable_evaluation(run.run_dir, EVALUATION, dist) as store:
        result = evaluate(run.program, run.data.test, EvaluationSettings.of(cfg, k), dist=dist, store=store,
                          progress=progress, labels=run.program.policy.scored_labels(run.data.test_labels))
        if dist.main:
            write_evaluation(run, result)
            plots.run_pictures(run, result, read_metrics(run.run_dir))
    return result

def write_evaluation(run: Run, result: Evaluation, name: str = EVALUATION) -> Path:
    summary = {"epoch": run.epoch, "checkpoint": run.source, "dataset": run.config.data["name"], "split": "test",
               "model_program": run.config.model.program, **result.summary()}
    return write_text(run.run_dir / name, json.dumps(summary, indent=2) + "\n")
