"""Model programs: the protocol, the stock VAE and yours, and how a run folder rebuilds one.

A **model program** is a ``torch.nn.Module`` with two Pyro functions of a batch x of shape
(batch, *data_shape)::

    def model(self, x):                                   # p(z) p(x|z)
        with pyro.plate("data", x.shape[0]):              # the datapoints (required, named "data")
            z = pyro.sample("z", p_z)                     # one or more latent sites
            pyro.sample("x", p_x_given_z(z), obs=x)       # the observed site, named "x"

    def guide(self, x):                                   # q(z|x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q_z_given_x(x))              # the same latent sites, reparameterized

Its parameters are the module's own (``nn.Parameter``s, trained by the library's optimizer;
``pyro.module`` calls are optional, for raw ``pyro.infer.SVI``). Every latent site sits inside the
data plate (no global latents); pyro-vae's objectives are pathwise, so each guide site needs
``rsample``. With K > 1 particles model and guide run inside an outer particle plate, so their
tensors must broadcast over a leading dimension (as for Pyro's ``vectorize_particles``).

Optional, by duck typing: ``check_data(x, split)``, ``prepare_train_set(x)``,
``prepare_eval_set(x)``, ``prepare_batch(x, generator)`` and ``stochastic_batches`` (the data
contract: refuse data the program cannot score, binarize, ...; default: the data as it is, whose
values are still checked against the support of site "x"); ``fit_to_data(x, generator)`` (once,
before training, with the prepared training set: a float tensor, or for rows on disk, a streaming
layout, the container itself, ``x[index]`` reading rows and ``data.row_totals(x)`` their totals;
counts held sparse in memory come as a float tensor unless the module sets ``fit_takes_rows =
True``, then as the :class:`~pyro_vae.data.SparseRows` container); ``network_bodies()`` (the modules
``train.precision = "bfloat16"`` may run in bfloat16).

From a config, ``[model] program = "package.module:ClassName"`` names the class (imported with the
current directory on ``sys.path``, as ``python -m`` would) and the table's other keys are its
keyword options; if its ``__init__`` takes ``data_shape``, the data's shape is passed too. A run
folder records the class, its options (each read back from the attribute of the same name) and
the identity of its code (``[model.code]``: module, source file, SHA-256). Loading a run folder
imports that code only when asked (``--trust-code``, ``load_run(..., trust_code=True)``) and
refuses a source file that changed since, naming it.

:class:`Program` is the library's view of any program: its terms source (``terms.source_for``), its
data contract, pictures (decode z, draw from p(z)), the shape of its latents.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import inspect
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import constraints

from .config import CODE_KEY, Config, ModelConfig, ProgramConfig, library_program
from .data.checks import check_batch, require_finite
from .data.storage import SparseRows
from .distributions import enumerable, one_hot_groups, state_count
from .errors import ConfigError, DataError, ProgramError
from .labels import LABEL_SITE, LabelPolicy, policy_of  # noqa: F401  (LABEL_SITE: re-exported)
from .labels import label_use  # noqa: F401  (deprecated: labels.policy_of)
from .networks import eval_mode
from .terms import OBSERVED, DirectSource
from .vae import VAE

STOCK = "vae"
DATA_CONTRACT = ("check_data", "prepare_train_set", "prepare_eval_set", "prepare_batch")


# ---------------------------------------------------------------------------------------------
# Code identity and loading


@dataclass(frozen=True)
class CodeIdentity:
    """Which code a user program came from: its module, source file and the file's SHA-256, and
    the options of its class a run folder could not record (``recorded_options``)."""

    module: str
    file: str
    sha256: str
    unrecorded: tuple[str, ...] = ()

    @classmethod
    def of(cls, program_class: type) -> "CodeIdentity":
        path = inspect.getsourcefile(program_class) or ""
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else ""
        return cls(program_class.__module__, str(Path(path).resolve()) if path else "", digest)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"module": self.module, "file": self.file, "sha256": self.sha256}
        if self.unrecorded:
            out["unrecorded"] = list(self.unrecorded)
        return out

    @classmethod
    def from_dict(cls, table: dict | None) -> "CodeIdentity | None":
        if not table:
            return None
        return cls(table["module"], table["file"], table["sha256"], tuple(table.get("unrecorded", ())))

    def require_same(self, now: "CodeIdentity", where: str) -> None:
        """Refuse code that changed since this identity was recorded, naming the file."""
        if now.sha256 != self.sha256:
            moved = f" (recorded at {self.file})" if now.file != self.file else ""
            raise ProgramError(
                f"the program's code changed since {where} was written: {now.file}{moved} has SHA-256 "
                f"{now.sha256[:12]}..., the run recorded {self.sha256[:12]}.... Its parameters belong to the "
                f"code it was trained with: restore that file (e.g. from version control), or train a new run.")


@contextlib.contextmanager
def _current_directory_importable() -> Iterator[None]:
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())


def import_program_class(path: str, where: str = "model.program") -> type:
    """The class named by ``"package.module:ClassName"``; a ProgramError says which part failed."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ConfigError(
            f"{where} = {path!r}: give \"{STOCK}\" (the stock VAE) or an import path \"package.module:ClassName\" "
            f"of your own model program (see `pyro_vae.programs`).")
    with _current_directory_importable():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            missing = e.name or module_name
            raise ProgramError(
                f"{where} = {path!r}: cannot import module '{module_name}' (no module named '{missing}'). "
                f"Is it installed, on PYTHONPATH, or under the current directory ({os.getcwd()})?") from None
        except Exception as e:  # the user's module itself failed to import
            raise ProgramError(f"{where} = {path!r}: importing module '{module_name}' failed: "
                               f"{type(e).__name__}: {e}") from None
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ProgramError(
                f"{where} = {path!r}: module '{module_name}' ({getattr(module, '__file__', '?')}) has no "
                f"attribute '{qualname}'.")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ProgramError(f"{where} = {path!r} is not an nn.Module class: a model program is an nn.Module with "
                           f"model(x) and guide(x) methods.")
    _require_protocol_methods(obj, path)
    return obj


def _require_protocol_methods(cls: type, label: str) -> None:
    missing = [m for m in ("model", "guide") if not callable(getattr(cls, m, None))]
    if missing:
        raise ProgramError(f"{label} has no {' or '.join(f'{m}(x)' for m in missing)} method: a model program "
                           f"defines model(x) (p(z) p(x|z)) and guide(x) (q(z|x)).")


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in list(params.items())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def signature_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls.__init__``'s options that a TOML table can hold (``data_shape`` aside)."""
    return {n: list(p.default) if isinstance(p.default, tuple) else p.default
            for n, p in _init_parameters(cls).items()
            if n != "data_shape" and p.default is not inspect.Parameter.empty and _toml_value(p.default)}


def _takes_any_keyword(cls: type) -> bool:
    """Whether ``cls.__init__`` has ``**kwargs`` (a VAE subclass passing its options on, say)."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def _toml_value(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, (list, tuple)):
        return all(_toml_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _toml_value(v) for k, v in value.items())
    return False


def recorded_options(program: nn.Module) -> tuple[dict[str, Any], str]:
    """The keyword options that rebuild ``program`` (each read from its attribute of the same name;
    a VAE subclass's components from its ``spec()``) and, if some cannot be, why not ("" when all can)."""
    params = _init_parameters(type(program))
    library = isinstance(program, VAE) or library_program(class_path(type(program)))
    spec = program.spec() if library else {}
    options = {k: v for k, v in spec.items() if k in params or _takes_any_keyword(type(program))}
    missing = []
    for name in params:
        if name == "data_shape" or name in options:
            continue
        value = getattr(program, name, inspect.Parameter.empty)
        if value is inspect.Parameter.empty or not _toml_value(value):
            missing.append(name)  # (its default may not be what built it: never assumed)
            continue
        options[name] = list(value) if isinstance(value, tuple) else value
    why = ""
    if missing:
        why = (f"option(s) {', '.join(missing)} of {type(program).__qualname__} are not kept as plain attributes "
               f"of the same name")
    elif type(program).__module__ == "__main__":
        why = f"{type(program).__qualname__} is defined in a script (__main__), which another process cannot import"
    return options, why


def build_program(model: ModelConfig | ProgramConfig, data_shape: tuple[int, ...], *, trust_code: bool = True,
                  where: str = "the config") -> "Program":
    """The program a config's ``[model]`` table names, built for data of ``data_shape``.

    ``trust_code=False`` (a run folder read without ``--trust-code``) refuses to import user code."""
    if isinstance(model, ModelConfig):
        vae = VAE(data_shape=data_shape, latent_dim=model.latent_dim, prior=model.prior,
                  likelihood=model.likelihood, guide=model.guide, network=model.network)
        return Program(vae)
    code = CodeIdentity.from_dict(model.code)
    if not trust_code and not library_program(model.program):
        at = f" ({code.file})" if code else ""
        raise ProgramError(
            f"{where} names user code, model.program = {model.program!r}{at}. Loading a run folder imports "
            f"code only when you ask: pass --trust-code (Python: trust_code=True) if you trust that module, "
            f"since a config from elsewhere could name any module.")
    if model.program.startswith("__main__:"):
        raise ProgramError(
            f"{where} was trained with {model.program}, a class defined in a script, which another process "
            f"cannot import: load it in Python with load_run(RUN, model={model.program[9:]}(...)), or move the class "
            f"into a module and train again.")
    if code is not None and code.unrecorded:
        raise ProgramError(
            f"{where} cannot rebuild its program by itself: option(s) {', '.join(code.unrecorded)} of "
            f"{model.program} were not recorded (the class does not keep them as attributes of the same name). "
            f"Load it in Python with load_run(RUN, model=...) given the program built as it was trained, or keep each "
            f"option as an attribute of its name and train again.")
    try:
        cls = import_program_class(model.program)
    except ProgramError as e:
        if code is None or not code.file:
            raise
        raise ProgramError(f"{e} {where} was trained with it from {code.file}.") from None
    now = CodeIdentity.of(cls)
    if code is not None:
        code.require_same(now, where)
    accepted = _init_parameters(cls)
    for key in model.options:
        if (key not in accepted and not _takes_any_keyword(cls)) or key == "data_shape":
            valid = ", ".join(f"{n}" + ("" if p.default is inspect.Parameter.empty else f" (default {p.default!r})")
                              for n, p in accepted.items() if n != "data_shape") or "none"
            raise ConfigError(f"unknown option '{key}' for model program {model.program}. Its options: {valid}.")
    kwargs = dict(model.options)
    if "data_shape" in accepted or _takes_any_keyword(cls):
        kwargs["data_shape"] = tuple(data_shape)
    try:
        module = cls(**kwargs)
    except (ConfigError, ProgramError, DataError):
        raise
    except Exception as e:
        raise ProgramError(f"building model program {model.program} with {model.options} failed: "
                           f"{type(e).__name__}: {e}") from None
    return Program(module, data_shape=data_shape)


# ---------------------------------------------------------------------------------------------
# The library's view of a program


class _Identity:
    """The data contract of a program without one: the data as it is."""

    stochastic_batches = False
    discrete = None

    def check_data(self, x, split):
        pass

    def prepare_train_set(self, x):
        return x

    def prepare_eval_set(self, x):
        return x

    def prepare_batch(self, x, generator):
        return x


class _DataContract:
    """The data side of a :class:`Program`: what prepares and checks the data it scores (the stock
    VAE's likelihood, the program's own methods, or nothing), the refusals at its Python boundary,
    and its draws in the data's shape. (A base class of Program, which provides ``module``, ``vae``,
    ``direct``, ``data_shape``, ``name`` and the probes these read.)"""

    @property
    def contract(self):
        """What prepares and checks data: the stock VAE's likelihood, the program's own methods, or nothing."""
        if self.vae is not None:
            return self.vae.likelihood
        if any(hasattr(self.module, m) for m in DATA_CONTRACT):
            return _OwnContract(self.module)
        return _Identity()

    def check_data(self, x: torch.Tensor, split: str) -> None:
        """Refuse data the program cannot score: its contract's checks, and for a program without
        the stock likelihood's, the support of its observed site "x"."""
        self.contract.check_data(x, split)

    def check_observed(self, x: torch.Tensor, where: str = "input") -> None:
        """The Python boundary of evaluation: refuse a batch the program cannot score as it is (the
        prepared data) with the fix named: the stock likelihood's ``check_observed``; for other
        programs the shape (where the data shape is known), dtype, finiteness and the support of
        site "x"."""
        if self.vae is not None:
            self.vae.likelihood.check_observed(x, where, like=self.vae.decoder)
            if self.direct:
                return
        else:
            if self.data_shape is not None:
                check_batch(x, self.data_shape, where, like=self.module)
            require_finite(x, where)
        self.check_support(x, where)

    def check_support(self, x: torch.Tensor, split: str) -> None:
        """Refuse prepared data outside the support of site "x" (programs other than the stock VAE)."""
        if self.vae is not None and self.direct:
            return  # the likelihood's own check_data covers it, with the fix named
        with torch.no_grad(), torch.random.fork_rng():
            site = self.probing(min(16, x.shape[0]))._observed_site(x[:16])
        fn = site["fn"]
        try:  # the value the site observed, which a program may have reshaped or transformed from x
            ok = bool(fn.support.check(site["value"]).all())
        except Exception:  # a support that cannot be checked elementwise
            return
        if not ok:
            raise DataError(
                f"the {split} data (values in [{x.min().item():g}, {x.max().item():g}]) is outside the support of "
                f"the program's observed site \"x\" ({type(fn).__name__}, support {fn.support}). Prepare the data "
                f"for it (a prepare_eval_set / prepare_batch method on the program, e.g. binarizing), or choose a "
                f"likelihood whose support holds it.")

    def fit_to_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Once, before training: the stock prior's and likelihood's ``fit_to_data`` (VampPrior
        pseudo-inputs, the count likelihoods' library size), or the program's own."""
        if self.vae is not None:
            self.vae.prior.fit_to_data(x, generator)
            self.vae.likelihood.fit_to_data(x)
        elif hasattr(self.module, "fit_to_data"):  # (sparse rows dense unless the module takes containers)
            takes_rows = getattr(self.module, "fit_takes_rows", False) or not isinstance(x, SparseRows)
            self.module.fit_to_data(x if takes_rows else x.float(), generator)

    def _as_data(self, value: torch.Tensor) -> torch.Tensor:
        """A value of site "x" (n, *its event) in the data's shape (n, *data_shape): as it is, or
        reshaped in row-major order where the program observed a reshaped x (e.g. images flattened
        to vectors inside its model); refused where the site holds another number of values."""
        if self.data_shape is None or tuple(value.shape[1:]) == self.data_shape:
            return value
        if value[0].numel() == math.prod(self.data_shape):
            return value.reshape(value.shape[0], *self.data_shape)
        raise ProgramError(
            f"the observed site \"{OBSERVED}\" of {self.name} holds {tuple(value.shape[1:])} values per datapoint, "
            f"which do not reshape to the data's shape {self.data_shape}: the library cannot draw what the model "
            f"generates as the data it observed. Observe x (or a reshape of it) at site \"{OBSERVED}\".")


def _evaluating(method):
    """The method run with the program's module in evaluation mode (``networks.eval_mode``): batch
    norm by its running averages, no dropout, whatever mode the module was left in."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with eval_mode(self.module):
            return method(self, *args, **kwargs)
    return wrapped


class Program(_DataContract):
    """Any model program as the trainer, evaluator, ``compare`` and the pictures use it.

    ``module`` is the nn.Module itself (what is trained and checkpointed); ``source`` computes its
    terms (the direct path only for the stock VAE's own model and guide); the rest is read off the
    module where it declares it (the stock VAE's likelihood, prior and networks) or off a trace of
    the program."""

    def __init__(self, module: nn.Module, data_shape: tuple[int, ...] | None = None) -> None:
        if isinstance(module, Program):
            raise TypeError("Program(Program): pass the module")
        _require_protocol_methods(type(module), type(module).__qualname__)
        self.module = module
        self.policy: LabelPolicy = policy_of(type(module))  # how its model and guide take labels (labels.py)
        self.labels: torch.Tensor | None = None  # the labels this view of the program is given (labelled())
        self._nesting: dict = {}
        self.source = self.policy.source(module, None, self._nesting)
        self.direct = isinstance(self.source, DirectSource)
        self.vae = module if isinstance(module, VAE) else None  # its components (data contract, networks)
        shape = getattr(module, "data_shape", None) or data_shape  # the program's own, where it declares one
        self.data_shape = tuple(shape) if shape is not None else None
        self._probes: dict = {}  # the probe's findings, shared by every labelled view of this program (keyed by
        # whether y is given: a semi-supervised program's latents are y and z, and z alone with y observed)
        self.num_classes = self.policy.check_module(module)

    # -- labels --------------------------------------------------------------------------------

    @property
    def labels_use(self) -> str | None:
        """Deprecated: ``policy`` (labels.py) says how the program takes labels."""
        import warnings

        warnings.warn("Program.labels_use is deprecated: use Program.policy (pyro_vae.labels)", DeprecationWarning,
                      stacklevel=2)
        return self.policy.legacy_use

    def labelled(self, y: torch.Tensor | None) -> "Program":
        """This program with labels y given (integer classes, one per datapoint of the batches it
        will score): its terms source, pictures and checks all pass y to model and guide. ``None``
        (a semi-supervised program only): y unobserved, a latent."""
        y = self.policy.view_labels(self, y)
        view = copy.copy(self)
        view.labels = y
        view.source = self.policy.source(self.module, y, self._nesting)
        return view

    def check_labels(self, y, where: str = "labels") -> torch.Tensor:
        """Labels as the program takes them, integer classes in 0..C-1, refused otherwise (naming the values)."""
        y = torch.as_tensor(y)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
            raise DataError(f"{where} must be a 1-D tensor of integer classes, one per datapoint; got {y.dtype} of "
                            f"shape {tuple(y.shape)}.")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(f"{where} hold values in [{int(y.min())}, {int(y.max())}]; {self.name} has num_classes = "
                            f"{self.num_classes}, so labels are 0..{self.num_classes - 1}.")
        p = next(self.module.parameters(), None)
        return y.long().to(p.device if p is not None else y.device)

    def probing(self, n: int) -> "Program":
        """The view of the program the library's probes run (shapes, supports, widths) at n
        placeholder datapoints: a conditional program, or a semi-supervised one viewed with its
        labels given, given class 0 (a probe's numbers do not depend on it); any other as it is."""
        if not self.policy.probe_labels(self.labels):
            return self
        p = next(self.module.parameters(), None)
        return self.labelled(torch.zeros(n, dtype=torch.long, device=p.device if p is not None else None))

    def label_posterior(self, x: torch.Tensor):
        """q(y|x) of a semi-supervised program, a distribution over one-hot y, (batch,) datapoints:
        the program's ``label_posterior(x)`` where it has one, else its guide's site "y" run without labels."""
        return self.policy.label_posterior(self, x)

    def _model_fn(self):
        return self.policy.model_fn(self)

    def _guide_fn(self):
        return self.policy.guide_fn(self)

    # -- identity ------------------------------------------------------------------------------

    @property
    def user_code(self) -> bool:
        """False for the stock VAE class itself; True for any other class (a VAE subclass included)."""
        return type(self.module) is not VAE

    @property
    def name(self) -> str:
        return STOCK if not self.user_code else type(self.module).__qualname__

    def model_table(self) -> tuple[dict[str, Any], str]:
        """The config's ``[model]`` table that rebuilds this program, and why it cannot where it
        cannot (its code table then lists the options it could not record)."""
        if not self.user_code:
            return {"program": STOCK, **self.module.spec()}, ""
        options, why = recorded_options(self.module)
        code = CodeIdentity.of(type(self.module))
        missing = [n for n in _init_parameters(type(self.module)) if n != "data_shape" and n not in options]
        if why and missing:
            code = CodeIdentity(code.module, code.file, code.sha256, tuple(missing))
        return {"program": class_path(type(self.module)), **options, "code": code.to_dict()}, why

    def network_bodies(self) -> list[nn.Module] | None:
        """The networks mixed precision may run in bfloat16; None when the program does not say."""
        if self.vae is not None:
            return [self.vae.encoder, self.vae.decoder, *self.vae.likelihood.bodies()]
        own = getattr(self.module, "network_bodies", None)
        return list(own()) if own is not None else None

    @property
    def discrete(self) -> bool:
        """Whether log p(x|z) is a probability mass (discrete data), for bits/dim."""
        if self.vae is not None:
            return self.vae.likelihood.discrete
        return bool(self._probe()["observed"]["fn"].support.is_discrete)

    @property
    def guide_family(self) -> str | None:
        """The registered guide family's name (stock VAE), else None."""
        return self.vae.posterior.name if self.vae is not None and self.direct else None

    # -- latents -------------------------------------------------------------------------------

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each latent site's event shape, in the guide's order."""
        if self.direct:
            return {"z": (self.vae.latent_dim,)}
        return self._probe()["latents"]

    @property
    def latent_dim(self) -> int | None:
        """The dimension of the latent where it is one continuous vector (one site, event shape (D,)), else None."""
        shapes = self.latent_shapes
        if len(shapes) == 1:
            (shape,) = shapes.values()
            if len(shape) == 1:
                return shape[0]
        return None

    @property
    def discrete_latents(self) -> bool:
        """Whether some latent site is discrete (its q(z|x) has a discrete support: categorical,
        Bernoulli): the pathwise estimators, 2-D quadrature and the posterior picture do not apply."""
        return self._probe()["discrete"]

    @property
    def discrete_sites(self) -> list[str]:
        """The latent sites whose q(z|x) is over a discrete set (one-hot groups, binary units)."""
        return [name for name in self.latent_shapes if name in self._probe()["states"] or name in self.code_groups]

    @property
    def simplex_sites(self) -> list[str]:
        """The latent sites whose q(z|x) lives on the simplex (a Dirichlet guide: topic proportions)."""
        return self._probe()["simplex"]

    @property
    def code_groups(self) -> dict[str, tuple[int, int]]:
        """(M groups, K classes) of each latent site whose q(z|x) is one-hot groups (a categorical latent)."""
        return self._probe()["groups"]

    @property
    def enumerable_states(self) -> dict[str, int]:
        """How many states each latent site has whose every state can be listed (one-hot groups,
        binary units: ``distributions.enumerable``)."""
        return self._probe()["states"]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The inference network ("encoder": what the guide's q(z|x) reads) and the generative model
        ("decoder": every other parameter)."""
        if self.vae is not None:
            vae = self.vae
            return {"encoder": [*vae.encoder.parameters(), *vae.posterior.parameters()],
                    "decoder": [*vae.decoder.parameters(), *vae.prior.parameters(), *vae.likelihood.parameters()]}
        params = [p for p in self.module.parameters() if p.requires_grad]
        x = self._placeholder(2)
        with torch.random.fork_rng(), poutine.block(), eval_mode(self.module):
            guide_trace = poutine.trace(self.probing(2)._guide_fn()).get_trace(x)
            log_q = sum(s["fn"].log_prob(s["value"]).sum() for s in _sample_sites(guide_trace))
            grads = torch.autograd.grad(log_q, params, allow_unused=True) if torch.is_tensor(log_q) and log_q.requires_grad \
                else [None] * len(params)
        guide = [p for p, g in zip(params, grads) if g is not None]
        ids = {id(p) for p in guide}
        return {"encoder": guide, "decoder": [p for p in params if id(p) not in ids]}

    # -- pictures ------------------------------------------------------------------------------

    def _placeholder(self, n: int) -> torch.Tensor:
        if self.data_shape is None:
            raise ProgramError(f"{self.name} has no data_shape: give the program a data_shape attribute (or build "
                               f"it through the trainer, which knows the data).")
        p = next(self.module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        value = self.vae.likelihood.placeholder if self.vae is not None else 0.0
        return torch.full((n, *self.data_shape), value, device=device)

    def _observed_site(self, x: torch.Tensor, z: dict[str, torch.Tensor] | None = None) -> dict:
        """The model's site "x" (its fn is p(x|z)) run on x, at given z or at z ~ p(z)."""
        self.policy.require_runnable(self)
        model = self._model_fn() if z is None else poutine.condition(self._model_fn(), data=z)
        with poutine.block():
            trace = poutine.trace(model).get_trace(x)
        if OBSERVED not in trace.nodes:
            raise ProgramError(f"the model of {self.name} has no observed site \"{OBSERVED}\".")
        return trace.nodes[OBSERVED]

    def _probe(self) -> dict:
        key = "probe" if self.labels is None else "probe, y given"
        if key not in self._probes:
            # in evaluation mode: two placeholder rows must not move a batch norm's running averages
            with torch.no_grad(), torch.random.fork_rng(), pyro.validation_enabled(False), eval_mode(self.module):
                x, probe = self._placeholder(2), self.probing(2)
                with probe.source.given(x) as at_x:
                    terms = at_x.draw(1)
                self._probes[key] = {"latents": {n: tuple(s.value.shape[1:]) if s.value.dim() > 1 else ()
                                            for n, s in terms.latents.items()},
                                "discrete": any(s.q.support.is_discrete for s in terms.latents.values()),
                                "groups": {n: one_hot_groups(s.q) for n, s in terms.latents.items()
                                           if one_hot_groups(s.q) is not None},
                                "states": {n: state_count(s.q) for n, s in terms.latents.items() if enumerable(s.q)},
                                "simplex": [n for n, s in terms.latents.items() if s.q.support is constraints.simplex],
                                "observed": probe._observed_site(x)}
        return self._probes[key]

    @property
    def mean_available(self) -> bool:
        """Whether E[x|z] has a closed form (pictures show it; else draws x ~ p(x|z))."""
        if self.direct:
            return self.vae.likelihood.mean_available
        try:
            self._probe()["observed"]["fn"].mean
        except NotImplementedError:
            return False
        return True

    @torch.no_grad()
    @_evaluating
    def decode(self, z: dict[str, torch.Tensor], pixels: str = "mean") -> torch.Tensor:
        """Images for latents z ({site: (N, *event)}): E[x|z], or a draw x ~ p(x|z) for
        ``pixels = "sample"`` or where the mean has no closed form."""
        if self.direct:
            head = self.vae.decoder(z["z"])
            if pixels == "sample" or not self.vae.likelihood.mean_available:
                return self.vae.likelihood(head).sample()
            return self.vae.likelihood.mean(head)
        n = next(iter(z.values())).shape[0]
        fn = self._observed_site(self._placeholder(n), z)["fn"]
        if pixels != "sample":
            try:
                return self._as_data(fn.mean)
            except NotImplementedError:
                pass
        return self._as_data(fn.sample())

    @torch.no_grad()
    @_evaluating
    def prior_draws(self, n: int) -> dict[str, torch.Tensor]:
        """n draws z ~ p(z), by latent site ({site: (n, *event)})."""
        if self.direct:
            return {"z": self.vae.p_z().sample((n,))}
        self.policy.require_runnable(self)
        with poutine.block():
            trace = poutine.trace(self._model_fn()).get_trace(self._placeholder(n))
        return {name: s["value"] for name, s in trace.nodes.items()
                if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}

    @torch.no_grad()
    @_evaluating
    def posterior_means(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """E_q[z|x] by latent site ({site: (batch, *event)}; from draws where q has no closed-form mean)."""
        with self.source.given(x) as at_x:
            return at_x.means()


def _sample_sites(trace) -> list[dict]:
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]
            and not site_is_subsample(s)]


class _OwnContract:
    """A program's own data-contract methods, each defaulting to the data as it is."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.stochastic_batches = bool(getattr(module, "stochastic_batches", False))

    def check_data(self, x, split):
        own = getattr(self.module, "check_data", None)
        if own is not None:
            own(x, split)

    def prepare_train_set(self, x):
        own = getattr(self.module, "prepare_train_set", None)
        return own(x) if own is not None else x

    def prepare_eval_set(self, x):
        own = getattr(self.module, "prepare_eval_set", None)
        return own(x) if own is not None else x

    def prepare_batch(self, x, generator):
        own = getattr(self.module, "prepare_batch", None)
        return own(x, generator) if own is not None else x


def as_program(obj, data_shape: tuple[int, ...] | None = None) -> Program:
    """``obj`` if it is a :class:`Program`, else the Program of the module ``obj``."""
    return obj if isinstance(obj, Program) else Program(obj, data_shape)


def checked_program(obj, x: torch.Tensor, where: str = "input") -> Program:
    """``as_program(obj)`` for scoring the batch x, which is refused first if the program cannot score
    it as it is (:meth:`Program.check_observed`): the boundary of the evaluation functions."""
    program = as_program(obj, tuple(x.shape[1:]) if torch.is_tensor(x) else None)
    program.check_observed(x, where)
    return program


def check_params_are_the_modules(program: Program, x: torch.Tensor) -> None:
    """Refuse ``pyro.param`` sites that are not the module's own parameters: the library trains,
    checkpoints and averages the module's parameters, so such a site would silently stay at its
    initial value."""
    own = {id(p) for p in program.module.parameters()}
    probe = program.probing(x.shape[0])
    model, guide = probe._model_fn(), probe._guide_fn()
    with torch.random.fork_rng(), poutine.block(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide, param_only=True).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=poutine.trace(guide).get_trace(x)),
                                    param_only=True).get_trace(x)
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "param" and id(site["value"].unconstrained()) not in own:
                raise ProgramError(
                    f"the program creates pyro.param('{name}'), which is not one of its nn.Module parameters. "
                    f"pyro-vae trains, checkpoints and averages the module's parameters, so that one would stay at "
                    f"its initial value: make it an nn.Parameter of the module (a constrained one through a "
                    f"parametrization, e.g. softplus of a raw parameter).")


def build_model(config: Config, data_shape: tuple[int, ...], *, trust_code: bool = True,
                where: str = "the config") -> Program:
    """The model program ``config.model`` names (the stock VAE, or a user program), for data of
    ``data_shape``: ``programs.build_program``."""
    return build_program(config.model, data_shape, trust_code=trust_code, where=where)


def config_with_model(config: Config, model: nn.Module | None) -> tuple[Config, str]:
    """``config`` with its ``[model]`` table replaced by the one that rebuilds the program object
    ``model`` (a run trained with ``Trainer(model=...)``), and why the folder cannot rebuild it where
    it cannot; ``config`` unchanged without one. A config naming another program is refused."""
    if model is None:
        return config, ""
    table, note = Program(model).model_table()
    named = config.model
    if isinstance(named, ProgramConfig) and named.program != table["program"]:
        raise ConfigError(
            f"the config names model program {named.program!r} and model= is a {table['program']!r}: "
            f"give one of them (model= replaces the config's [model] table).")
    return Config.from_dict({**config.to_dict(), "model": table}), note


def program_for_run(config: Config, model: nn.Module | None, data_shape: tuple[int, ...], rebuild_note: str,
                    log) -> tuple[Program, Config]:
    """The program a run trains and its config: ``model`` (a program object) if given, checked against
    the data's shape, else the one the config names, whose ``[model]`` table is then resolved
    (:func:`record_program`). Says so where the run folder cannot rebuild it by itself."""
    if model is not None:
        program = Program(model, data_shape=data_shape)
        own = getattr(model, "data_shape", None)
        if own is not None and tuple(own) != tuple(data_shape):
            raise ConfigError(f"the model was built for data of shape {tuple(own)}, and the data has shape "
                              f"{tuple(data_shape)}: build it for this data (data_shape={tuple(data_shape)}).")
    else:
        program = build_model(config, data_shape)
        config, rebuild_note = record_program(config, program)
    if rebuild_note:
        log(f"note: this run folder cannot rebuild its program by itself ({rebuild_note}); load it in "
            f"Python with load_run(RUN, model={type(program.module).__qualname__}(...)).")
    return program, config


def record_program(config: Config, program: Program) -> tuple[Config, str]:
    """``config`` with its ``[model]`` table resolved for the user program built from it: the
    options it was given, the defaults of the class's signature for the others (what built it),
    and the identity of its code; and why the run folder cannot rebuild it ("" where it can: a
    class another process can import)."""
    if not isinstance(config.model, ProgramConfig):
        return config, ""
    table, why = program.model_table()
    code = {k: v for k, v in table[CODE_KEY].items() if k != "unrecorded"}  # built from these options: all known
    table = {"program": table["program"], **signature_defaults(type(program.module)), **config.model.options,
             CODE_KEY: code}
    return Config.from_dict({**config.to_dict(), "model": table}), why if "__main__" in why else ""
