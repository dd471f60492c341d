"""ProdLDA (examples/configs/prodlda.toml) on 20 Newsgroups beside scikit-learn's LDA, scored by the same code.

    /work/venv-bench/bin/python benchmarks/topics.py --epochs 50 --samples 100

On ``../shared/data/20news`` (11,258 train / 7,487 test documents x 1,995 words, as the ProdLDA
authors preprocessed it), K = 50 topics:

* the library's ProdLDA config with three priors over the topic proportions, each its own run:
  ``logistic-normal`` (the Laplace approximation of Dir(1) in the softmax basis: ProdLDA's),
  ``dirichlet`` (Dir(1) with the reparameterized ``dirichlet`` guide, the decoder reading theta
  as is) and ``gaussian-softmax`` (z ~ N(0, I), theta = softmax(z): the standard-normal prior
  with the topic network's softmax latent); everything else as the config has it;
* ``sklearn.decomposition.LatentDirichletAllocation(n_components=50)`` (batch variational Bayes,
  its default priors 1/50), when scikit-learn is installed (the ``bench`` extra);
* the unigram model of the training documents (``topics.unigram_log_probability``): the perplexity floor.

Every model is scored by ``pyro_vae.topics``: the NPMI of each topic's 10 top words over the test
documents (``topics.coherence``: document co-occurrence, a never co-occurring pair -1; also given
over the training documents, and with such pairs scored 0 as some scripts do) and the per-word
perplexity of the test documents (``topics.perplexity``) from log p(x_d) by importance sampling with
K draws: for a VAE ``evaluation.evaluate`` (q(z|x) proposals); for LDA theta ~ Dir(gamma_d), the
document's variational posterior, with beta its topic-word posterior mean, log p(x_d | beta) =
log mean_k Dir(theta_k; alpha) Mult(x_d; theta_k beta) / Dir(theta_k; gamma_d). Training seconds
per epoch (the VAEs) and in all, on one CPU thread. The training file is sorted by newsgroup: the
library's trainer draws a fresh permutation of the documents every epoch (train.order
"permutation", the default for data in memory); ``--sides pyro-vae`` runs the library alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's library, and common.py
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "20news"
PRIORS = {  # name: (prior, guide, the topic network's latent)
    "logistic-normal": ({"name": "logistic-normal", "alpha": 1.0}, "diagonal-gaussian", "softmax"),
    "dirichlet": ({"name": "dirichlet", "alpha": 1.0}, "dirichlet", "simplex"),
    "gaussian-softmax": ({"name": "standard-normal"}, "diagonal-gaussian", "softmax"),
}
PUBLISHED = "ProdLDA authors' code, 50 topics, 200 epochs: NPMI 0.2506, 0.2311, 0.2506 (their script's reference corpus)"


def load_corpus(folder: Path):
    import scipy.sparse

    train = scipy.sparse.load_npz(folder / "train.npz").tocsr()
    test = scipy.sparse.load_npz(folder / "test.npz").tocsr()
    vocabulary = (folder / "vocab.txt").read_text().split("\n")[: train.shape[1]]
    return train, test, vocabulary


def scores(weights, log_px, train, test, elbo=None) -> dict:
    """The same numbers for every model: NPMI (three ways) and perplexity."""
    from pyro_vae import topics

    on_test = topics.coherence(weights, test, n=10)
    result = {"npmi_test": on_test["npmi"], "npmi_train": topics.coherence(weights, train, n=10)["npmi"],
              "npmi_test_never_together_0": topics.coherence(weights, test, n=10, never_together=0.0)["npmi"],
              "npmi_per_topic": on_test["per_topic"], "perplexity": topics.perplexity(log_px, test),
              "top_words": on_test["top_words"]}
    if elbo is not None:
        result["perplexity_from_elbo"] = topics.perplexity(elbo, test)
    return result


def prodlda_config(prior: str, folder: Path, topics: int, epochs: int, samples: int, seed: int,
                   overrides: tuple[str, ...] = ()) -> dict:
    """examples/configs/prodlda.toml with ``prior``, on the folder's corpus, then ``overrides`` (--set's KEY=VALUE)."""
    from pyro_vae.config import apply_overrides

    raw = tomllib.loads((ROOT / "examples" / "configs" / "prodlda.toml").read_text())
    raw["seed"] = seed
    raw["data"] = {"name": "counts", "path": str(folder / "train.npz"), "test_path": str(folder / "test.npz"),
                   "vocabulary": str(folder / "vocab.txt")}
    p, guide, latent = PRIORS[prior]
    raw["model"].update(latent_dim=topics, prior=dict(p), guide=guide)
    raw["model"]["network"]["latent"] = latent
    raw["train"].update(epochs=epochs, curve_every=max(epochs, 1))
    raw["eval"] = {"samples": samples, "exact_points": 0, "train_subset": 1000}
    return apply_overrides(raw, list(overrides))


def run_prodlda(prior: str, args, train, test, vocabulary, out: Path) -> dict:
    """Train the config with ``prior``, then score it: per test document log p(x) with K draws."""
    from pyro_vae import Config, Trainer
    from pyro_vae.evaluation import evaluate
    from pyro_vae.topics import topic_words_table
    from pyro_vae.trained import load_run

    folder, run_dir = Path(args.data), out / f"run-{prior}"
    config = Config.from_dict(prodlda_config(prior, folder, args.topics, args.epochs, args.samples, args.seed,
                                             tuple(args.set)))
    start = time.perf_counter()
    Trainer(config, run_dir, progress=False, log=lambda s: None).fit(overwrite=True)
    seconds = time.perf_counter() - start
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    epoch_seconds = [line["seconds"]["train"] for line in lines if "seconds" in line]
    run = load_run(run_dir)
    ev = evaluate(run.program, run.data.test, samples=args.samples, seed=args.seed, posterior_means=False)
    weights = run.program.vae.decoder.topic_words().detach().cpu()
    result = scores(weights, ev.log_px, train, test, elbo=ev.elbo)
    (out / f"topics-{prior}.txt").write_text("\n".join(topic_words_table(weights, vocabulary, 10)) + "\n")
    return {**result, "model": f"pyro-vae ProdLDA, prior {prior}" + "".join(f", {o}" for o in args.set),
            "train_seconds": seconds,
            "seconds_per_epoch": float(np.median(epoch_seconds)) if epoch_seconds else float("nan"),
            "log_px_mean": float(ev.log_px.mean()), "elbo_mean": float(ev.elbo.mean())}


def lda_log_px(lda, test, samples: int, seed: int, batch: int = 128) -> torch.Tensor:
    """log p(x_d | beta) of each test document under a fitted sklearn LDA, by importance sampling
    theta ~ Dir(gamma_d) (gamma_d its variational posterior: transform's proportions times
    K alpha + N_d, the sum the update gives), beta = the topic-word posterior mean."""
    alpha = float(lda.doc_topic_prior_)
    k = lda.n_components
    beta = torch.from_numpy(lda.components_ / lda.components_.sum(1, keepdims=True)).double()
    proportions = lda.transform(test)
    totals = np.asarray(test.sum(1), dtype=np.float64).reshape(-1)
    gamma = torch.from_numpy(proportions * (k * alpha + totals)[:, None]).double().clamp_min(1e-6)
    prior = torch.distributions.Dirichlet(torch.full((k,), alpha, dtype=torch.float64))
    torch.manual_seed(seed)
    out = []
    for first in range(0, test.shape[0], batch):
        x = torch.from_numpy(test[first:first + batch].toarray()).double()
        q = torch.distributions.Dirichlet(gamma[first:first + batch])
        theta = q.sample((samples,)).clamp_min(1e-30)  # (S, B, K)
        theta = theta / theta.sum(-1, keepdim=True)
        log_lik = (x * (theta @ beta).clamp_min(1e-300).log()).sum(-1)  # sum_v x_v log p_v, p = theta beta
        n = x.sum(-1)
        coefficient = torch.lgamma(n + 1) - torch.lgamma(x + 1).sum(-1)
        log_w = prior.log_prob(theta) + log_lik + coefficient - q.log_prob(theta)
        out.append(torch.logsumexp(log_w, 0) - math.log(samples))
    return torch.cat(out)


def run_lda(args, train, test, vocabulary) -> dict:
    from sklearn.decomposition import LatentDirichletAllocation

    from pyro_vae.topics import topic_words_table

    lda = LatentDirichletAllocation(n_components=args.topics, learning_method="batch", max_iter=args.lda_iterations,
                                    random_state=args.seed, n_jobs=1)
    start = time.perf_counter()
    lda.fit(train)
    seconds = time.perf_counter() - start
    log_px = lda_log_px(lda, test, args.samples, args.seed)
    import sklearn

    (Path(args.out) / "topics-sklearn-lda.txt").write_text("\n".join(topic_words_table(lda.components_, vocabulary, 10))
                                                          + "\n")
    return {**scores(lda.components_, log_px, train, test), "model": f"scikit-learn {sklearn.__version__} "
            f"LatentDirichletAllocation(n_components={args.topics}, batch, max_iter={args.lda_iterations})",
            "train_seconds": seconds, "seconds_per_epoch": seconds / args.lda_iterations,
            "sklearn_perplexity": float(lda.perplexity(test)), "log_px_mean": float(log_px.mean())}


def unigram(train, test) -> dict:
    from pyro_vae import topics

    log_px = topics.unigram_log_probability(train, test)
    return {"model": "unigram (training word frequencies, add-one)", "perplexity": topics.perplexity(log_px, test),
            "log_px_mean": float(log_px.mean())}


def fmt(v, digits=3) -> str:
    return "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | NPMI (test docs) | NPMI (train docs) | NPMI (test, unseen pair 0) | perplexity (IS) | "
             "perplexity (ELBO bound) | s/epoch | train s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {fmt(r.get('npmi_test'))} | {fmt(r.get('npmi_train'))} | "
                     f"{fmt(r.get('npmi_test_never_together_0'))} | {fmt(r.get('perplexity'), 1)} | "
                     f"{fmt(r.get('perplexity_from_elbo'), 1)} | {fmt(r.get('seconds_per_epoch'), 2)} | "
                     f"{fmt(r.get('train_seconds'), 0)} |")
    return lines


def write_results(args, argv, rows, corpus) -> list[str]:
    from common import machine

    load = os.getloadavg()
    lines = [f"machine: {machine()}; load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, "
             f"{load[2]:.1f} (other jobs share the cores)", f"command: python benchmarks/topics.py {' '.join(argv)}",
             f"data: {corpus}; {args.topics} topics; {args.epochs} epochs (the authors: 200); K = {args.samples} "
             f"importance samples a test document; documents shuffled every epoch", "", *table(rows), "",
             f"published: {PUBLISHED}"]
    out = Path(args.out)
    (out / "result.md").write_text("\n".join(lines) + "\n")
    slim = [{k: v for k, v in r.items() if k not in ("npmi_per_topic", "top_words")} for r in rows]
    (out / "result.json").write_text(json.dumps({
        "command": ["python", "benchmarks/topics.py", *argv], "machine": machine(), "corpus": corpus,
        "topics": args.topics, "epochs": args.epochs, "samples": args.samples, "rows": slim, "published": PUBLISHED,
        "per_topic": {r["model"]: {"npmi": r.get("npmi_per_topic"), "top_words": r.get("top_words")} for r in rows
                      if "npmi_per_topic" in r}}, indent=1))
    return lines


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a folder of train.npz, test.npz, vocab.txt")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "topics-20news"))
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--samples", type=int, default=100, help="K importance samples per test document")
    p.add_argument("--priors", nargs="+", choices=list(PRIORS), default=list(PRIORS))
    p.add_argument("--lda-iterations", type=int, default=20)
    p.add_argument("--sides", nargs="+", choices=["pyro-vae", "scikit-learn"], default=["pyro-vae", "scikit-learn"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the library's config (e.g. train.adam_betas=[0.99,0.999]), as pyro-vae train --set")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, vocabulary = load_corpus(Path(args.data))
    corpus = f"{args.data}: {train.shape[0]} train / {test.shape[0]} test documents x {train.shape[1]} words"
    rows = []
    if "pyro-vae" in args.sides:
        for prior in args.priors:
            rows.append(run_prodlda(prior, args, train, test, vocabulary, out))
            print(f"{prior}: {rows[-1]['train_seconds']:.0f} s", flush=True)
    if "scikit-learn" in args.sides:
        rows.append(run_lda(args, train, test, vocabulary))
        print(f"lda: {rows[-1]['train_seconds']:.0f} s", flush=True)
    rows.append(unigram(train, test))
    print("\n".join(write_results(args, argv, rows, corpus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
