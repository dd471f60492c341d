"""Typed options, the component registries, and the run configuration.

One code path builds every component. A TOML table, a CLI override (``--set model.prior=mixture``)
and a Python argument (``VAE(prior=MixturePrior(components=10))``) all end in
:meth:`Registry.build`, which checks the name, then the option names, types and ranges, and
returns the component. A component's resolved options (defaults filled in) are read back from the
object itself, so a run folder's ``config.toml`` always says exactly what was built.

A component is a class with keyword-only, annotated options::

    @PRIORS.register("mixture")
    class MixturePrior(Prior):
        '''sum_k pi_k N(mu_k, diag sigma_k^2).

        Options:
            components: number of mixture components K.
        '''
        def __init__(self, *, components: int = 10): ...

and it keeps each option as an attribute of the same name.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib
import inspect
import json
import math
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ConfigError

# --------------------------------------------------------------------------------------------
# Typed values


def describe_type(annotation: Any) -> str:
    """A short human name for an option's type annotation."""
    origin = get_origin(annotation)
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if annotation is str:
        return "str"
    if annotation is type(None):
        return "none"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if origin in (list, tuple):
        return f"list of {describe_type(get_args(annotation)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against ``annotation`` and return it in canonical form.

    ints are accepted where floats are expected (and become floats); lists are checked element by
    element; ``bool`` is never accepted as a number. Anything else raises :class:`ConfigError`.
    """
    origin = get_origin(annotation)

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{where} must be {describe_type(annotation)}, got {value!r} ({type(value).__name__})."
        )

    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        fail()
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        fail()
    if annotation is str:
        if isinstance(value, str):
            return value
        fail()
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.lower() == "none"):  # TOML has no null: "none"
            return None
        fail()
    if origin is Literal:
        if isinstance(value, str) and value in get_args(annotation):
            return value
        fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        (item,) = get_args(annotation)[:1]
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (Union, types.UnionType):
        for option in get_args(annotation):
            try:
                return coerce(value, option, where)
            except ConfigError:
                continue
        fail()
    raise TypeError(f"unsupported option annotation {annotation!r} at {where}")  # a library bug


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (range checks)."""
    if not condition:
        raise ConfigError(message)


# --------------------------------------------------------------------------------------------
# Components and registries


@dataclass(frozen=True)
class Option:
    """One typed, documented option of a component."""

    name: str
    annotation: Any
    default: Any
    help: str = ""

    @property
    def type_name(self) -> str:
        return describe_type(self.annotation)


_OPTION_LINE = re.compile(r"^\s{4,}(\w+):\s*(.+)$")


def _option_help(doc: str | None) -> dict[str, str]:
    """Parse the ``Options:`` section of a docstring into {option: one-line help}."""
    if not doc or "Options:" not in doc:
        return {}
    helps: dict[str, str] = {}
    current = None
    for line in doc.split("Options:", 1)[1].splitlines()[1:]:
        if not line.strip():
            break
        m = _OPTION_LINE.match(line)
        if m and len(line) - len(line.lstrip()) <= 8:
            current = m.group(1)
            helps[current] = m.group(2).strip()
        elif current:
            helps[current] += " " + line.strip()
    return helps


class Component:
    """A registered, typed building block: a prior, a likelihood, a guide, a network, ...

    Subclasses declare their options as keyword-only ``__init__`` arguments with annotations and
    defaults, and store each one as an attribute of the same name. ``common_options`` are options
    every component of a kind takes (a dataset's ``labels``): set as attributes before the
    subclass's ``__init__`` runs, and written in its table only where they differ from the default.
    """

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    common_options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def option_specs(cls) -> dict[str, Option]:
        init = getattr(cls.__init__, "__wrapped__", cls.__init__)
        if init is object.__init__:
            return {}
        hints = typing.get_type_hints(init)
        helps: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a subclass may document only what it changes
            helps.update(_option_help(klass.__doc__))
        specs = {}
        for p in inspect.signature(init).parameters.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            specs[p.name] = Option(p.name, hints.get(p.name, Any), p.default, helps.get(p.name, ""))
        for option in cls.common_options:
            specs.setdefault(option.name, option)
        return specs

    @classmethod
    def summary(cls) -> str:
        """The first line of the docstring: the component's maths in one line."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def options(self) -> dict[str, Any]:
        """The options this object was built with, defaults included."""
        return {k: copy.deepcopy(getattr(self, k)) for k in self.option_specs()}

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: the table that rebuilds this component."""
        common = {o.name: o.default for o in self.common_options}
        return {"name": self.name, **{k: v for k, v in self.options().items() if k not in common or v != common[k]}}

    def extra_repr(self) -> str:  # used by nn.Module's repr for module components
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())


def _validated_init(cls: type[Component]) -> None:
    """Wrap ``cls.__init__`` so options are type-checked however the object is built."""
    init = cls.__init__
    if getattr(init, "_validates_options", False):  # already checked (it reads type(self)'s options)
        return

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        specs = type(self).option_specs()
        label = f"{type(self).kind} '{type(self).name}'"
        for key in kwargs:
            if key not in specs:
                raise ConfigError(_unknown_option_message(type(self), key, label))
        kwargs = {k: coerce(v, specs[k].annotation, f"{label} option '{k}'") for k, v in kwargs.items()}
        for k, opt in specs.items():  # canonical defaults too (tuples become lists, ints floats)
            if k not in kwargs and opt.default is not inspect.Parameter.empty:
                kwargs[k] = coerce(opt.default, opt.annotation, f"{label} option '{k}'")
        own = inspect.signature(init).parameters
        for option in type(self).common_options:
            if option.name not in own:  # (a subclass may take a common option itself)
                setattr(self, option.name, kwargs.pop(option.name))
        init(self, *args, **kwargs)

    checked_init._validates_options = True  # type: ignore[attr-defined]
    cls.__init__ = checked_init  # type: ignore[method-assign]


def _unknown_option_message(cls: type[Component], key: str, label: str, where: str = "") -> str:
    specs = cls.option_specs()
    choose = (f" The {cls.kind} itself is chosen by its name: {where}.name = \"...\" in a file, or --set {where}=NAME "
              f"(`pyro-vae list {cls.kind}` lists them)." if where else "")
    if not specs:
        return f"{label} takes no options, got '{key}'.{choose}"
    valid = ", ".join(f"{o.name} ({o.type_name}, default {o.default!r})" for o in specs.values())
    hint = difflib.get_close_matches(key, list(specs), n=1)
    hint_text = f" Did you mean '{hint[0]}'?" if hint else ""
    return f"unknown option '{key}' for {label}.{hint_text} Valid options: {valid}." + (
        choose if key in (cls.kind, "dataset", "type", "kind") else "")


class Registry:
    """Names -> component classes of one kind, and the one place components are built."""

    def __init__(self, kind: str, plural: str, description: str, module: str):
        self.kind = kind
        self.plural = plural
        self.description = description
        self.module = module  # where the stock components register themselves, imported on first use
        self._own: dict[str, type[Component]] = {}

    @property
    def _classes(self) -> dict[str, type[Component]]:
        """The registered classes, the stock ones imported first (so ``import pyro_vae`` and the CLI's
        ``--help`` need not import torch: the components' modules load when a registry is first read)."""
        if self.module not in sys.modules:
            importlib.import_module(self.module)
        return self._own

    def register(self, name: str):
        """Class decorator: register ``cls`` under ``name`` and validate its options on init."""

        def decorate(cls: type[Component]) -> type[Component]:
            if name in self._own:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            cls.name = name
            cls.kind = self.kind
            _validated_init(cls)
            self._own[name] = cls
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` again (a component registered for a while: a test's, a plugin's)."""
        if name not in self._classes:
            raise KeyError(f"{self.kind} '{name}' is not registered")
        del self._own[name]

    def names(self) -> list[str]:
        return list(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str, where: str = "") -> type[Component]:
        if name not in self._classes:
            hint = difflib.get_close_matches(name, self.names(), n=1)
            hint_text = f" Did you mean '{hint[0]}'?" if hint else ""
            at = f" (at {where})" if where else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{at}.{hint_text} Valid {self.plural}: "
                f"{', '.join(self.names())}. `pyro-vae list` shows each with its options."
            )
        return self._classes[name]

    def build(self, spec: Any, where: str = "") -> Component:
        """Build a component from a name, a ``{"name": ..., **options}`` table, or an instance."""
        where = where or self.kind
        if isinstance(spec, Component):
            if spec.kind != self.kind:
                raise ConfigError(f"{where} must be a {self.kind}, got a {spec.kind} ('{spec.name}').")
            return spec
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where} must be a {self.kind} name, a table with a 'name' key, or a {self.kind} "
                f"object; got {spec!r}."
            )
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(
                f"{where} needs a 'name' naming the {self.kind}; valid {self.plural}: "
                f"{', '.join(self.names())}."
            )
        cls = self.get(name, where)
        label = f"{where} ({self.kind} '{name}')"
        specs = cls.option_specs()
        for key, value in options.items():
            if key not in specs:
                raise ConfigError(_unknown_option_message(cls, key, label, where))
            try:
                options[key] = coerce(value, specs[key].annotation, f"{where}.{key}")
            except ConfigError as e:  # say what the option is for: its one-line help
                raise ConfigError(f"{e} ({key}: {specs[key].help})" if specs[key].help else str(e)) from None
        try:
            return cls(**options)
        except ConfigError as e:
            raise ConfigError(f"{label}: {e}") from None

    def resolve(self, spec: Any, where: str = "") -> dict[str, Any]:
        """The full table (defaults filled in) of the component ``spec`` builds."""
        return self.build(spec, where).spec()

    def describe(self) -> str:
        """Every registered name with its maths line and options (for ``pyro-vae list``)."""
        lines = [f"{self.plural} — {self.description}"]
        for name, cls in self._classes.items():
            lines.append(f"  {name:<22} {cls.summary()}")
            for opt in cls.option_specs().values():
                default = "" if opt.default is inspect.Parameter.empty else f" = {format_value(opt.default)}"
                lines.append(f"      {opt.name}{default}   ({opt.type_name})")
                if opt.help:
                    lines += textwrap.wrap(opt.help, 100, initial_indent=" " * 10, subsequent_indent=" " * 10)
        return "\n".join(lines)


def format_value(value: Any) -> str:
    """A value as it would be written in TOML (``none`` for an unset option)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dict):  # an inline table (a component in a list)
        return "{" + ", ".join(f"{toml_key(k)} = {format_value(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes (quote, backslash, control characters as \\uXXXX) are
    TOML's; other characters stay as they are (UTF-8), but DEL, which TOML also escapes."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(key: str) -> str:
    """A TOML key: bare where it may be (letters, digits, _ and -), else a quoted string."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


PRIORS = Registry("prior", "priors", "p(z)", "pyro_vae.priors")
LIKELIHOODS = Registry("likelihood", "likelihoods", "p(x|z), the decoder's distribution over every pixel",
                       "pyro_vae.likelihoods")
GUIDES = Registry("guide", "guides", "q(z|x), the amortized posterior", "pyro_vae.guides")
NETWORKS = Registry("network", "networks", "encoder and decoder bodies (no probability in them)", "pyro_vae.networks")
OBJECTIVES = Registry("objective", "objectives", "the training objective, a pyro.infer.ELBO", "pyro_vae.objectives")
DATASETS = Registry("dataset", "datasets", "where x comes from", "pyro_vae.data")
CALLBACKS = Registry("callback", "callbacks", "called as training runs: loggers (train.callbacks, a list)",
                     "pyro_vae.callbacks")

REGISTRIES = {r.kind: r for r in (PRIORS, LIKELIHOODS, GUIDES, NETWORKS, OBJECTIVES, DATASETS, CALLBACKS)}


# --------------------------------------------------------------------------------------------
# The run configuration


def component(kind: str, default: str):
    """A config field holding a component table of ``kind``."""
    return field(default_factory=lambda: {"name": default}, metadata={"registry": kind})


def components(kind: str):
    """A config field holding a list of component tables of ``kind`` (empty by default)."""
    return field(default_factory=list, metadata={"registry": kind, "many": True})


@dataclass
class ModelConfig:
    """The stock VAE (``program = "vae"``): the generative model p(z) p(x|z) and the guide q(z|x),
    each component by name."""

    program: str = "vae"
    latent_dim: int = 50
    prior: dict = component("prior", "standard-normal")
    likelihood: dict = component("likelihood", "bernoulli")
    guide: dict = component("guide", "diagonal-gaussian")
    network: dict = component("network", "mlp")

    def check(self, where: str) -> None:
        require(self.latent_dim >= 1, f"{where}.latent_dim must be >= 1, got {self.latent_dim}.")

    @property
    def label(self) -> str:
        """A few words naming the model (run folder names)."""
        return f"{self.prior['name']}-{self.likelihood['name']}"


#: the key of a user program's table that holds the identity of its code (written by the trainer)
CODE_KEY = "code"


#: seconds a data-parallel collective waits for the other processes (``pyro-vae train --timeout``)
DEFAULT_TIMEOUT = 300.0

#: model programs of the library besides the stock VAE, by name (``model.program = "gmvae"``):
#: library code, so a run folder rebuilds them without --trust-code
LIBRARY_PROGRAMS = {"gmvae": "pyro_vae.gmvae:GaussianMixtureVAE", "cvae": "pyro_vae.labelled:ConditionalVAE",
                    "m2": "pyro_vae.labelled:SemiSupervisedVAE", "quadrant-cvae": "pyro_vae.quadrants:QuadrantCVAE",
                    "scvi": "pyro_vae.single_cell:SingleCellVAE", "scvi-batch": "pyro_vae.single_cell:BatchSingleCellVAE"}
#: library programs that moved, by the path a run folder may have recorded: read as where they are now
MOVED_PROGRAMS = {"pyro_vae.completion:QuadrantCVAE": "pyro_vae.quadrants:QuadrantCVAE"}


def library_program(path: str) -> bool:
    """Whether ``model.program`` names a program of pyro-vae itself (not user code)."""
    return path in LIBRARY_PROGRAMS.values()


@dataclass
class ProgramConfig:
    """A model program of your own: ``program = "package.module:ClassName"``, and the class's
    keyword options as the table's other keys (checked against the class when it is built,
    ``programs.build_program``). ``code`` is written by the trainer: the module, source file and
    SHA-256 the run was trained with."""

    program: str
    options: dict = field(default_factory=dict)
    code: dict | None = None

    def table(self) -> dict[str, Any]:
        """The ``[model]`` table: program, options, then the code identity."""
        return {"program": self.program, **copy.deepcopy(self.options),
                **({CODE_KEY: dict(self.code)} if self.code else {})}

    @property
    def label(self) -> str:
        return self.program.rpartition(":")[2].rpartition(".")[2]


def model_from_dict(raw: Any, where: str) -> "ModelConfig | ProgramConfig":
    """The ``[model]`` table: the stock VAE's (``program`` unset or ``"vae"``) or a user program's."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table, got {raw!r}.")
    program = raw.get("program", "vae")
    if not isinstance(program, str):
        raise ConfigError(f"{where}.program must be a string, got {program!r}.")
    if program == "vae":
        return _section_from_dict(ModelConfig, raw, where)
    program = MOVED_PROGRAMS.get(program, LIBRARY_PROGRAMS.get(program, program))
    if ":" not in program:
        names = ", ".join(f'"{n}"' for n in LIBRARY_PROGRAMS)
        raise ConfigError(
            f"unknown model program {program!r} at {where}.program. Give \"vae\" (the stock VAE, the default), "
            f"{names}, or the import path of your own, \"package.module:ClassName\" (see pyro_vae.programs).")
    options = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("program", CODE_KEY)}
    code = raw.get(CODE_KEY)
    if code is not None:
        keys = {"module", "file", "sha256"}
        fine = isinstance(code, dict) and keys <= set(code) <= keys | {"unrecorded"} and all(
            isinstance(code[k], str) for k in keys) and all(isinstance(v, str) for v in code.get("unrecorded", []))
        if not fine:
            raise ConfigError(
                f"{where}.{CODE_KEY} is reserved for the identity of the program's code that the trainer records "
                f"(a table of module, file and sha256, and the options it could not record); got {code!r}. Name your "
                f"program's option otherwise.")
    return ProgramConfig(program, options, dict(code) if code else None)


@dataclass
class TrainConfig:
    """Stochastic variational inference: the objective, its optimizer and schedule.

    The objective runs on the model program's terms (``terms.py``): traced for any program, read
    straight from the stock VAE's distributions where the program is that one (no setting chooses
    it). ``validate = true`` turns Pyro's and torch's per-step distribution checks back on, for
    debugging (data is always checked once, up front).

    Model selection never looks at the test set: ``validation`` training images (a fixed
    permutation by ``seed``) are held out and scored every epoch; the parameters with the best
    validation ELBO are kept in ``best.pt`` and are the ones the final evaluation reports.
    ``early_stopping`` stops after that many epochs without a better validation ELBO (0: off).
    ``max_minutes`` caps the training wall time (training steps plus the per-epoch scoring; an
    epoch that would overrun the cap is not started; 0: no cap). ``snapshot_minutes`` keeps a copy
    of the parameters every so many minutes of training in ``snapshots/`` (0: off), for curves of
    quality against time. ``curve_every`` scores the learning curves (the ELBO of a fixed training
    subset and of the test set, in metrics.jsonl and curves.png) on the first epoch and every
    ``curve_every``-th; the validation ELBO, which selects best.pt, is scored every epoch. The
    scoring counts against ``max_minutes``: a run capped by time buys training epochs with a larger
    ``curve_every`` (its skipped epochs' lines have no "train" or "test" entry).

    ``lr_final`` anneals the learning rate geometrically from ``lr`` to ``lr * lr_final`` over the
    run's budget: at progress p in [0, 1] the rate is ``lr * lr_final ** p``, where p is the larger
    of the fraction of ``epochs`` done and, under a time cap, the fraction of ``max_minutes`` used
    (1: a constant rate). Under a time cap the schedule follows measured time, so reruns are not
    bit-identical; raising ``epochs`` or ``max_minutes`` on resume stretches it (the rate rises).

    ``adam_betas`` are Adam's two decay rates, of its moving averages of the gradient and of its square
    (torch's 0.9, 0.999; ProdLDA's authors' 0.99, 0.999, which gave worse topics here and one
    diverged run in two: ``benchmarks/results/topics-20news-adam-betas``). ``adam_eps`` and ``weight_decay`` are
    Adam's epsilon and (L2) weight decay, stated for the gradient
    of the loss per datapoint (nats per datapoint, as every printed number): the trainer differentiates
    the loss summed over a batch of B = ``batch_size`` datapoints (the training set's size where that is
    smaller), so Adam is given ``adam_eps * B`` and ``weight_decay * B``: the steps Adam takes on the
    batch's mean loss (the batch size does not change what they mean). The update of a parameter whose gradient per datapoint is well below
    ``adam_eps`` shrinks towards plain SGD's, lr * gradient / adam_eps, instead of Adam's lr-sized step
    in a direction set by noise: scVI's 0.01 (with weight decay 1e-6) is a regularizer, worth +3.3 (NB)
    and +7.5 (ZINB) nats per held-out cell on PBMC 3k over three seeds (``examples/configs/scvi.toml``,
    ``benchmarks/results/scvi-tools-pbmc3k-adam-eps``); torch's 1e-8 is the default.

    ``ema`` (0: off) keeps an exponential moving average of the parameters with that decay per
    step (Polyak averaging; warmed up as min(ema, (1 + t) / (10 + t)) at step t). The average,
    not the last step's parameters, is what the per-epoch scores, best.pt and the final
    evaluation use: it removes part of the noise of the last steps. A decay d averages over about
    1 / (1 - d) steps (0.999: 1000 steps).

    ``precision = "bfloat16"`` trains in mixed precision: during the training steps the encoder and
    decoder bodies (and a likelihood's own networks: pixelcnn-bernoulli's causal stack) run under
    ``torch.autocast`` in bfloat16 (their matrix products and convolutions, accumulated in float32,
    each layer's output rounded to about 3 significant digits), while parameters, gradients, Adam's
    state, the guide's heads, the prior and every density, KL and bound stay float32. Only the steps
    change: the per-epoch scores, best.pt and every evaluation run in float32. It pays where the
    hardware multiplies bfloat16 faster than float32 (CPUs with AVX-512 BF16 or AMX, recent GPUs);
    the gradients are those of a slightly perturbed network, so compare validation scores before
    adopting it (``benchmarks/precision.py``, ``benchmarks/README.md``).

    ``callbacks`` is a list of callbacks (``pyro_vae.callbacks``: loggers such as ``tensorboard``),
    each a name or a table with its options, called as training runs; they observe and never change
    the run.

    ``order`` is the order an epoch visits the training rows in (``data/order.py``): "permutation",
    a fresh permutation of all rows each epoch; "chunks", chunks of ``chunk_rows`` consecutive rows
    in a seeded order, rows shuffled within a window of ``window`` chunks, what keeps reads from
    disk sequential; "auto": "chunks" for a streaming layout (its own chunks where ``chunk_rows`` is
    0), "permutation" otherwise. ``noise`` is where each step's random numbers come from:
    "global", the run's random streams (data-parallel: drawn for the whole global batch, each
    process keeping its rows); "keyed", each datapoint's noise keyed on (seed, epoch, step, its
    index) (``numerics.keyed_noise``), so that a process draws and reads nothing but its own share;
    "auto": "keyed" for a streaming layout, "global" otherwise.
    """

    objective: dict = component("objective", "elbo")
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    lr_final: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    kl_warmup_epochs: float = 0.0
    kl_warmup_start: float = 0.01
    validate: bool = False
    validation: int = 0
    early_stopping: int = 0
    max_minutes: float = 0.0
    snapshot_minutes: float = 0.0
    curve_every: int = 1
    ema: float = 0.0
    precision: Literal["float32", "bfloat16"] = "float32"
    callbacks: list = components("callback")
    order: Literal["auto", "permutation", "chunks"] = "auto"
    chunk_rows: int = 0
    window: int = 16
    noise: Literal["auto", "global", "keyed"] = "auto"

    def check(self, where: str) -> None:
        require(
            0.0 <= self.ema < 1.0,
            f"{where}.ema must be in [0, 1) (the moving average's decay per step, e.g. 0.999; 0: off), got {self.ema}.",
        )
        require(self.epochs >= 1, f"{where}.epochs must be >= 1, got {self.epochs}.")
        require(self.validation >= 0, f"{where}.validation must be >= 0 (0: no validation split), got {self.validation}.")
        require(
            self.early_stopping >= 0,
            f"{where}.early_stopping must be >= 0 (epochs without a better validation ELBO; 0: off), "
            f"got {self.early_stopping}.",
        )
        require(
            self.early_stopping == 0 or self.validation > 0,
            f"{where}.early_stopping = {self.early_stopping} needs a validation split to watch: set "
            f"{where}.validation to a number of training images to hold out (e.g. 10000).",
        )
        require(self.max_minutes >= 0, f"{where}.max_minutes must be >= 0 (0: no cap), got {self.max_minutes}.")
        require(
            self.snapshot_minutes >= 0,
            f"{where}.snapshot_minutes must be >= 0 (0: no snapshots), got {self.snapshot_minutes}.",
        )
        require(
            self.curve_every >= 1,
            f"{where}.curve_every must be >= 1 (score the train and test curves every that many epochs; "
            f"1: every epoch), got {self.curve_every}.",
        )
        require(self.batch_size >= 1, f"{where}.batch_size must be >= 1, got {self.batch_size}.")
        require(self.chunk_rows >= 0, f"{where}.chunk_rows must be >= 0 (0: the layout's chunks, or 4096 rows), got "
                                      f"{self.chunk_rows}.")
        require(self.window >= 1, f"{where}.window must be >= 1 (chunks shuffled together), got {self.window}.")
        require(self.lr > 0 and math.isfinite(self.lr), f"{where}.lr must be a finite number > 0, got {self.lr}.")
        require(
            0.0 < self.lr_final <= 1.0,
            f"{where}.lr_final must be in (0, 1] (the learning rate at the end of the budget, as a "
            f"fraction of train.lr; 1: constant), got {self.lr_final}.",
        )
        require(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
                f"{where}.adam_betas must be two numbers in [0, 1) (the decay rates of Adam's averages of the "
                f"gradient and of its square; torch's [0.9, 0.999]), got {self.adam_betas}.")
        require(self.adam_eps > 0 and math.isfinite(self.adam_eps),
                f"{where}.adam_eps must be a finite number > 0 (Adam's epsilon per datapoint; torch's 1e-8, "
                f"scVI's 0.01), got {self.adam_eps}.")
        require(self.weight_decay >= 0 and math.isfinite(self.weight_decay),
                f"{where}.weight_decay must be a finite number >= 0 (0: none), got {self.weight_decay}.")
        require(
            self.kl_warmup_epochs >= 0,
            f"{where}.kl_warmup_epochs must be >= 0 (0 turns warm-up off), got {self.kl_warmup_epochs}.",
        )
        require(
            0.0 < self.kl_warmup_start <= 1.0,
            f"{where}.kl_warmup_start must be in (0, 1], got {self.kl_warmup_start}: the KL weight scales "
            f"the latent site (poutine.scale), which must stay positive; 0.01 is a usual start.",
        )


@dataclass
class EvalConfig:
    """How the evidence and the ELBO are estimated on held-out data.

    ``samples``: K of the importance-sampled log p(x); ``batch_size`` datapoints at a time and at
    most ``chunk_pairs`` (datapoint, sample) pairs in memory (unset: on the CPU, as many as keep the
    widest activation of p(x|z) near 12 MiB; 16384 on an accelerator; ``metrics.chunk_pairs_for``);
    ``train_subset``: training datapoints evaluated each epoch; ``exact_points``: test datapoints
    (spread over the set) given exact values by 2-D quadrature (linear-Gaussian models get closed
    forms on all; 0 turns exact values off). The final evaluation's ELBO is averaged over the same
    ``samples`` draws that estimate log p(x) (each with its standard error); an evaluation without
    importance samples (the per-epoch scores) averages it over ``elbo_samples`` draws.
    """

    samples: int = 1000
    batch_size: int = 250
    chunk_pairs: int | None = None
    train_subset: int = 1000
    exact_points: int = 100
    elbo_samples: int = 1

    def check(self, where: str) -> None:
        require(self.samples >= 1, f"{where}.samples must be >= 1, got {self.samples}.")
        require(self.batch_size >= 1, f"{where}.batch_size must be >= 1, got {self.batch_size}.")
        require(self.chunk_pairs is None or self.chunk_pairs >= 1, f"{where}.chunk_pairs must be >= 1, got {self.chunk_pairs}.")
        require(self.train_subset >= 0, f"{where}.train_subset must be >= 0, got {self.train_subset}.")
        require(self.exact_points >= 0, f"{where}.exact_points must be >= 0, got {self.exact_points}.")
        require(self.elbo_samples >= 1, f"{where}.elbo_samples must be >= 1, got {self.elbo_samples}.")


#: the version of the config's layout, written into every config.toml (``schema``). A config
#: without one predates it: version 1 (read with ``_migrated``'s conversions of older keys).
CONFIG_SCHEMA = 1


@dataclass
class Config:
    """Everything that defines a run; ``config.toml`` in a run folder is this, resolved.

    ``schema`` is the version of this layout (written, not chosen: a config file written by a
    newer pyro-vae, with a higher one, is refused rather than misread)."""

    schema: int = CONFIG_SCHEMA
    seed: int = 0
    device: str = "auto"
    data: dict = component("dataset", "mnist5k")
    model: ModelConfig | ProgramConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self, where: str) -> None:
        require(self.schema <= CONFIG_SCHEMA,
                f"this config has schema = {self.schema}: it was written by a newer pyro-vae than this one, which "
                f"reads configs up to schema {CONFIG_SCHEMA}. Upgrade pyro-vae (pip install -U pyro-vae) to use it.")
        require(self.schema >= 1, f"schema must be a version >= 1, got {self.schema}.")
        require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}.",
        )

    # -- conversions -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None = None) -> "Config":
        """Validate a nested dict (from TOML, overrides or Python) into a resolved Config."""
        return _section_from_dict(cls, _migrated(raw or {}), "")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(self.model, ProgramConfig):
            out["model"] = self.model.table()
        return out

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_toml())

    @classmethod
    def load(cls, path: Path | str, overrides: list[str] | None = None) -> "Config":
        return cls.from_dict(apply_overrides(read_toml(path), overrides or []))


def _migrated(raw: dict[str, Any]) -> dict[str, Any]:
    """A config of an earlier pyro-vae as today's (schema 1, and files from before the schema key):
    ``train.engine`` ("direct" or "pyro", two computations of the same terms, tested equal) is gone;
    the terms source follows the program. A later schema adds its conversions here, by version."""
    train = raw.get("train")
    if isinstance(train, dict) and train.get("engine") in ("direct", "pyro"):
        raw = {**raw, "train": {k: v for k, v in train.items() if k != "engine"}}
    return raw


def dumps_toml(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """Write a config dict as TOML: plain values first, then sub-tables. None values are left out
    (TOML has no null; an option that is None is at its default)."""
    lines = [f"{toml_key(k)} = {format_value(v)}" for k, v in table.items() if v is not None and not isinstance(v, dict)]
    for key, sub in table.items():
        if isinstance(sub, dict):
            path = (*prefix, key)
            lines += ["", f"[{'.'.join(toml_key(p) for p in path)}]", dumps_toml(sub, path).rstrip("\n")]
    return "\n".join(line for line in lines).lstrip("\n") + "\n"


def _section_from_dict(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the config'} must be a table, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(key, list(fields), n=1)
        hint_text = f" Did you mean '{hint[0]}'?" if hint else ""
        at = f"[{where}]" if where else "the top level"
        top = {f.name for f in dataclasses.fields(Config)}
        if where and key in top and not hint:
            hint_text = f" '{key}' is a top-level key: write it above every [table] of the file, or --set {key}=..."
        raise ConfigError(
            f"unknown key '{key}' in {at} of the config.{hint_text} Valid keys: {', '.join(fields)}."
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if f.metadata.get("many"):
            specs = raw.get(name, [])
            if not isinstance(specs, list):
                raise ConfigError(f"{path} must be a list of {f.metadata['registry']} names or tables, got {specs!r}.")
            values[name] = [REGISTRIES[f.metadata["registry"]].resolve(spec, f"{path}[{i}]")
                            for i, spec in enumerate(specs)]
        elif "registry" in f.metadata:
            spec = raw.get(name, f.default_factory())  # type: ignore[misc]
            values[name] = REGISTRIES[f.metadata["registry"]].resolve(spec, path)
        elif cls is Config and name == "model":
            values[name] = model_from_dict(raw.get(name, {}), path)
        elif dataclasses.is_dataclass(hints[name]):
            values[name] = _section_from_dict(hints[name], raw.get(name, {}), path)
        elif name in raw:
            values[name] = coerce(raw[name], hints[name], path)
    section = cls(**values)
    section.check(where)
    return section


# --------------------------------------------------------------------------------------------
# TOML files and CLI overrides


def read_toml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory: give the path of a TOML file (e.g. "
                          f"{str(path / 'config.toml')!r}, a run folder's resolved config).")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.start}): TOML files are UTF-8; "
                          f"save it as UTF-8.") from None


def parse_value(text: str) -> Any:
    """A CLI override's value: TOML syntax (``10``, ``1e-3``, ``true``, ``[400, 200]``) or a bare word."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _component_paths(cls: type = Config, prefix: str = "") -> dict[str, dict]:
    """{"model.prior": {"name": "standard-normal"}, ...}: every component path with its default table."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint = ModelConfig if cls is Config and f.name == "model" else hints[f.name]
        if "registry" in f.metadata and not f.metadata.get("many"):
            out[path] = f.default_factory()  # type: ignore[misc]
        elif dataclasses.is_dataclass(hint):
            out.update(_component_paths(hint, path + "."))
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides, in order, to a raw config dict (returns a copy).

    Setting a component path to a name (``model.prior=mixture``) replaces that component's whole
    table, so options of the previous choice do not leak into the new one; set options after it
    (``model.prior.components=10``).
    """
    raw = copy.deepcopy(raw)
    components = _component_paths()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} must look like KEY=VALUE, e.g. model.prior=mixture or train.lr=3e-4."
            )
        key, text = (s.strip() for s in item.split("=", 1))
        value = parse_value(text)
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override key {key!r} is not a dotted path like model.prior.components.")
        if key in components and isinstance(value, str):
            value = {"name": value}
        node = raw
        for i, part in enumerate(parts[:-1]):
            sub = ".".join(parts[: i + 1])
            child = node.get(part)
            if isinstance(child, str) and sub in components:
                child = {"name": child}
            if child is None:
                child = dict(components.get(sub, {}))  # a component's options go into its default table
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key}: {sub} is {child!r}, not a table.")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw
