"""pyro-vae: variational autoencoders in Pyro where the maths is the code.

    from pyro_vae import VAE, MixturePrior, Config, Trainer
    vae = VAE(prior=MixturePrior(components=10), likelihood="bernoulli", latent_dim=16)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    Trainer(Config(), "runs/mine", model=MyProgram()).fit()   # any nn.Module with model(x), guide(x)
    run = pyro_vae.load("runs/mine"); mean, scale = run.encode(x); run.log_prob(x)["log_px"]
"""

__version__ = "0.1.0"

from .config import (  # noqa: E402
    DATASETS,
    GUIDES,
    LIKELIHOODS,
    NETWORKS,
    OBJECTIVES,
    PRIORS,
    REGISTRIES,
    Config,
)
from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    ProgramError,
    PyroVAEError,
    RunDirError,
    StorageError,
    TrainingDiverged,
)

# The rest loads on first use (PEP 562), so that `import pyro_vae` and the command line's --help and
# usage errors do not import torch and pyro; `from pyro_vae import VAE` works as before.
_LAZY = {
    "data": ("DataSplits", "FashionMNIST", "KMNIST", "MNIST", "MNIST5k", "Synthetic"),
    "guides": ("DiagonalGaussianGuide",),
    "likelihoods": ("BernoulliLikelihood", "ContinuousBernoulliLikelihood", "GaussianLikelihood", "LaplaceLikelihood"),
    "evaluation": ("Evaluation", "EvaluationSettings", "evaluate"),
    "metrics": ("elbo_terms", "log_evidence"),
    "networks": ("MLPNetwork",),
    "objectives": ("AnalyticKLELBO", "DReGIWAE", "IWAEBound", "MonteCarloELBO", "Objective", "RenyiBound",
                   "StickingTheLandingELBO"),
    "priors": ("LearnedGaussianPrior", "MixturePrior", "StandardNormalPrior"),
    "programs": ("Program",),
    "terms": ("Terms",),
    "trained": ("Run", "finish_run", "load", "load_run", "export_run"),
    "labels": ("LabelPolicy", "Unlabelled", "Conditional", "SemiSupervised"),
    "training": ("Trainer",),
    "vae": ("VAE",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    import importlib
    import importlib.util

    module = _WHERE.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # a submodule: pyro_vae.evaluation, ...
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # (the next lookup is a plain attribute)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "VAE", "Config", "Trainer", "Run", "load", "load_run", "finish_run",
    "evaluate", "elbo_terms", "log_evidence", "Evaluation", "EvaluationSettings",
    "StandardNormalPrior", "LearnedGaussianPrior", "MixturePrior",
    "BernoulliLikelihood", "ContinuousBernoulliLikelihood", "GaussianLikelihood", "LaplaceLikelihood",
    "DiagonalGaussianGuide", "MLPNetwork",
    "Program", "Terms", "Objective",
    "MonteCarloELBO", "AnalyticKLELBO", "IWAEBound", "RenyiBound", "StickingTheLandingELBO", "DReGIWAE",
    "MNIST5k", "MNIST", "FashionMNIST", "KMNIST", "Synthetic", "DataSplits",
    "PRIORS", "LIKELIHOODS", "GUIDES", "NETWORKS", "OBJECTIVES", "DATASETS", "REGISTRIES",
    "PyroVAEError", "ConfigError", "DataError", "RunDirError", "CheckpointError", "TrainingDiverged", "ProgramError", "StorageError",
]
