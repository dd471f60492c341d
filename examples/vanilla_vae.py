"""A vanilla VAE on the embedded MNIST subset with the Python API and plain pyro.infer.SVI.

    python examples/vanilla_vae.py            # ~1 minute on 2 CPU cores
    python examples/vanilla_vae.py --smoke    # a few seconds (what the tests run)
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE, MNIST5k, evaluate

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
args = parser.parse_args()
epochs, n_train, samples = (1, 512, 20) if args.smoke else (args.epochs, None, 1000)

pyro.set_rng_seed(0)
data = MNIST5k().load()  # 4,000 train / 1,000 test real digits, grey levels in [0, 1]
x_train = data.train[:n_train]

# p(z) = N(0, I); p(x|z) = Bernoulli(decoder(z)); q(z|x) = N(mu(x), sigma(x)^2). 784-400-16 MLPs.
vae = VAE(latent_dim=16, prior="standard-normal", likelihood="bernoulli", network={"name": "mlp", "hidden": [400]})
svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

for epoch in range(1, epochs + 1):
    total = 0.0
    for index in torch.randperm(len(x_train)).split(128):
        x = torch.bernoulli(x_train[index])  # dynamic binarization: a fresh binary image every time
        total += svi.step(x)  # -ELBO summed over the batch, in nats
    print(f"epoch {epoch:>3}  train ELBO {-total / len(x_train):8.2f} nats per datapoint")

x_test = vae.likelihood.prepare_eval_set(data.test)  # the test set binarized once, with a fixed seed
result = evaluate(vae, x_test, samples=samples)  # ELBO terms and importance-sampled log p(x)
print(result.table(f"test set: {result.n} digits"))
