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
from .data import DataSplits, FashionMNIST, KMNIST, MNIST, MNIST5k, Synthetic  # noqa: E402
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
from .guides import DiagonalGaussianGuide  # noqa: E402
from .likelihoods import (  # noqa: E402
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from .evaluation import Evaluation, EvaluationSettings, evaluate  # noqa: E402
from .metrics import elbo_terms, log_evidence  # noqa: E402
from .networks import MLPNetwork  # noqa: E402
from .objectives import (  # noqa: E402
    AnalyticKLELBO,
    DReGIWAE,
    IWAEBound,
    MonteCarloELBO,
    Objective,
    RenyiBound,
    StickingTheLandingELBO,
)
from .priors import LearnedGaussianPrior, MixturePrior, StandardNormalPrior  # noqa: E402
from .programs import Program  # noqa: E402
from .terms import Terms  # noqa: E402
from .runs import Run, finish_run, load, load_run  # noqa: E402
from .training import Trainer  # noqa: E402
from .vae import VAE  # noqa: E402

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
