"""The GPU path in one command: train and evaluate on CUDA, check the numbers against the CPU's.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu-check     # on a machine with CUDA

Two runs, each trained twice from the same seed, once on the CPU and once on ``--device`` (cuda):

* the default model on the embedded ``mnist5k`` (``--epochs``, 2): the CUDA run draws its noise
  from CUDA's generator, so the two runs are two draws of the same training, not the same numbers.
  Checked: the CPU run's parameters evaluated on CUDA give the CPU's test ELBO and log p(x) (K =
  ``--samples``) within 4 standard errors of their difference (each side's Monte Carlo error), and
  the CUDA-trained run's test ELBO is within ``--tolerance-trained`` nats (default 2.0) of the CPU's.
* a count model (negative binomial, observed library size) on a streaming layout written here
  (``--rows`` rows x 2,000 columns, 5% non-zeros): keyed noise is a function of (seed, epoch, step,
  datapoint index) on any device, so the two trainings take the same steps on the same numbers;
  checked: parameters within ``--tolerance-params`` (relative, default 1e-3; float32 reductions
  differ in order between devices) and the test ELBO within 0.05 nats.

Printed and written to ``--out``/result.md: each check passed or not, and steps per second on each
device. Exit status 0 when every check passes, 1 otherwise, 2 without CUDA (nothing checked).
``--device cpu`` runs the whole script on the CPU twice (what the test suite does, to keep it working).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402  (benchmarks/common.py)


def train(config: dict, device: str, run_dir: Path):
    from pyro_vae import Config
    from pyro_vae.training import Trainer

    trainer = Trainer(Config.from_dict({**config, "device": device}), run_dir, progress=False,
                      log=lambda m: None).fit()
    seconds = sum(h["seconds"]["train"] for h in trainer.history)  # the steps' wall time (the epochs' scoring aside)
    return trainer, trainer.step / seconds


def scores(trainer, device: str, samples: int) -> dict:
    """Test ELBO and log p(x) (K = samples) of the trainer's parameters, computed on ``device``."""
    from pyro_vae.evaluation import evaluate

    program = trainer.program
    program.module.to(device)
    x = trainer.data.test
    x = x.to(device) if torch.is_tensor(x) else x.to(device)
    ev = evaluate(program, x, seed=0, samples=samples, batch_size=250, posterior_means=False)
    n = len(ev.elbo)
    out = {"elbo": ev.elbo.mean().item(), "elbo_se": ev.elbo.std().item() / math.sqrt(n),
           "log_px": ev.log_px.mean().item(), "log_px_se": ev.log_px.std().item() / math.sqrt(n)}
    if ev.elbo_stderr is not None:  # the Monte Carlo error of the estimates (what differs between devices)
        out["elbo_mc"] = float(ev.elbo_stderr.pow(2).mean().sqrt() / math.sqrt(n))
        out["log_px_mc"] = float(ev.log_px_stderr.pow(2).mean().sqrt() / math.sqrt(n))
    return out


def default_model(args, device: str, work: Path) -> tuple[list[dict], dict]:
    config = {"seed": 0, "train": {"epochs": args.epochs}, "eval": {"samples": args.samples}}
    cpu, cpu_speed = train(config, "cpu", work / "default-cpu")
    on_cpu = scores(cpu, "cpu", args.samples)
    cross = scores(cpu, device, args.samples)
    gpu, gpu_speed = train(config, device, work / "default-gpu")
    trained = scores(gpu, device, args.samples)
    checks = []
    for key in ("elbo", "log_px"):
        allowed = 4 * math.hypot(on_cpu.get(f"{key}_mc", 0.0), cross.get(f"{key}_mc", 0.0)) + 1e-4
        checks.append({"check": f"default model, CPU parameters on {device}: test {key}", "cpu": on_cpu[key],
                       "device": cross[key], "allowed": allowed, "ok": abs(cross[key] - on_cpu[key]) <= allowed})
    checks.append({"check": f"default model trained on {device}: test elbo", "cpu": on_cpu["elbo"],
                   "device": trained["elbo"], "allowed": args.tolerance_trained,
                   "ok": abs(trained["elbo"] - on_cpu["elbo"]) <= args.tolerance_trained})
    return checks, {"default model": (cpu_speed, gpu_speed)}


def count_model(args, device: str, work: Path) -> tuple[list[dict], dict]:
    import scipy.sparse as sp

    from pyro_vae.data import LayoutWriter

    rng = np.random.default_rng(0)
    mu = np.exp(rng.normal(0, 1, 2000)).astype(np.float32)
    for name, n in (("train", args.rows), ("test", 1000)):
        with LayoutWriter(work / name, 2000, chunk_rows=1024, overwrite=True) as writer:
            for start in range(0, n, 1024):
                b = min(1024, n - start)
                r, c = np.nonzero(rng.random((b, 2000)) < 0.05)
                values = (1 + rng.negative_binomial(2, 2 / (2 + mu[c]))).astype(np.float32)
                writer.append(sp.csr_matrix((values, (r, c)), shape=(b, 2000)))
    config = {"seed": 0, "data": {"name": "stream", "path": str(work / "train"), "test_path": str(work / "test")},
              "model": {"latent_dim": 10, "likelihood": {"name": "negative-binomial", "library": "observed"},
                        "network": {"name": "mlp", "hidden": [128], "input": "log1p"}},
              "train": {"epochs": 1, "batch_size": 128, "objective": "elbo-analytic-kl"},
              "eval": {"samples": 10, "exact_points": 0}}
    cpu, cpu_speed = train(config, "cpu", work / "counts-cpu")
    gpu, gpu_speed = train(config, device, work / "counts-gpu")
    a = cpu.program.module.state_dict()
    b = {k: v.cpu() for k, v in gpu.program.module.state_dict().items()}
    worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-6)).item() for k in a if a[k].numel())
    elbo_cpu, elbo_gpu = cpu.history[-1]["test"]["elbo"], gpu.history[-1]["test"]["elbo"]
    return [{"check": f"streamed count model trained on {device}: parameters (largest relative difference)",
             "cpu": 0.0, "device": worst, "allowed": args.tolerance_params, "ok": worst <= args.tolerance_params},
            {"check": f"streamed count model trained on {device}: test elbo", "cpu": elbo_cpu, "device": elbo_gpu,
             "allowed": 0.05, "ok": abs(elbo_cpu - elbo_gpu) <= 0.05}], {"streamed count model": (cpu_speed, gpu_speed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tolerance-trained", type=float, default=2.0)
    parser.add_argument("--tolerance-params", type=float, default=1e-3)
    parser.add_argument("--out", help="folder for result.md and result.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing checked (run this on a machine with a GPU).")
        return 2
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        checks, speeds = default_model(args, args.device, Path(tmp))
        more, more_speeds = count_model(args, args.device, Path(tmp))
    checks, speeds = checks + more, {**speeds, **more_speeds}
    lines = [f"machine: {machine()}; device: {args.device} ({where})", "",
             "| check | CPU | device | allowed | ok |", "|---|---:|---:|---:|---|"]
    lines += [f"| {c['check']} | {c['cpu']:.4f} | {c['device']:.4f} | {c['allowed']:.4f} | {'yes' if c['ok'] else 'NO'} |"
              for c in checks]
    lines += ["", "| run | CPU steps/s | device steps/s |", "|---|---:|---:|"]
    lines += [f"| {name} | {c:.1f} | {g:.1f} |" for name, (c, g) in speeds.items()]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.md").write_text(text + "\n")
        (out / "result.json").write_text(json.dumps({"machine": machine(), "device": where, "checks": checks,
                                                     "steps_per_s": speeds}, indent=2) + "\n")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
