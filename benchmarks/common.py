"""What several benchmarks share: a config's model at its seeded initialization, with images.

Speed does not depend on the weights or on the pixel values, so the speed benchmarks time models
as built (``torch.manual_seed(config.seed)``, then ``build_model``) on random binary 28x28 images.
A prior that starts from the data (the VampPrior's pseudo-inputs) is fitted to those images.
The benchmarks import this as ``common`` (``python benchmarks/NAME.py`` puts this folder first on
``sys.path``).
"""

from __future__ import annotations

import torch

from pyro_vae import Config
from pyro_vae.programs import build_model
from pyro_vae.vae import VAE

ON = 0.3  # the chance that a random pixel is on (about Fashion-MNIST's share of dark pixels)


def seeded_model(config: Config, images: int) -> tuple[VAE, torch.Tensor]:
    """``config``'s VAE built under its seed, and ``images`` random binary images (N, 1, 28, 28)
    drawn after it; the prior is fitted to them (``fit_to_data``, seeded by the config)."""
    torch.manual_seed(config.seed)
    vae = build_model(config, (1, 28, 28)).module
    x = (torch.rand(images, 1, 28, 28) < ON).float()
    vae.prior.fit_to_data(x, torch.Generator().manual_seed(config.seed))
    return vae, x


def machine() -> str:
    """The machine in one line: CPU model (and whether it has AVX-512 BF16), cores, torch, pyro, python."""
    import os
    import platform

    import pyro

    model, bf16 = platform.processor() or platform.machine(), False
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        model, bf16 = (names[0] if names else model), "avx512_bf16" in info
    except OSError:
        pass
    return (f"{model}{' (AVX-512 BF16)' if bf16 else ''}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, python {platform.python_version()}")
