"""What a topic model is scored by, with definitions: its topics' top words, their coherence, perplexity.

A topic model here is a VAE whose decoder holds one word-weight vector per topic (the topic
network's ``vae.decoder.topic_words()``, a (K, V) matrix: K topics over a vocabulary of V words).

* :func:`top_words` - each topic's n words of largest weight;
* :func:`topic_words_table` - the same as readable lines;
* :func:`coherence` - the NPMI of each topic's top words over a stated reference corpus
  (``scores.npmi``), and their mean;
* :func:`perplexity` - exp of minus the log-probability of the test words per word, from the
  model's log p(x_d) (a bound or an estimate of it) less the multinomial coefficient;
* :func:`unigram_log_probability` - log p(x_d) under the training corpus's word frequencies, the
  floor any topic model must beat.

Counts (``reference_counts``, ``counts``, ``train_counts``, ``test_counts``) are (D, V) document-word
count matrices: numpy, torch (dense) or SciPy sparse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .config import require
from .scores import npmi


def _weights(weights) -> torch.Tensor:
    w = torch.as_tensor(weights.detach() if isinstance(weights, torch.Tensor) else np.asarray(weights))
    require(w.dim() == 2 and w.shape[0] >= 1 and w.shape[1] >= 1,
            f"topic-word weights must be a (K topics, V words) matrix, got shape {tuple(w.shape)}.")
    require(bool(torch.isfinite(w).all()), "topic-word weights must be finite (a NaN or inf weight has no rank).")
    return w


def top_words(weights, n: int = 10) -> torch.Tensor:
    """(K, n) word ids: row k lists topic k's n words of largest weight, largest first.

    ``weights``: (K, V), row k topic k's weight on each word (``decoder.topic_words()``). Words of
    equal weight are ranked by their index, the smaller first (a stable sort of the negated weights),
    so the result is a function of the weights alone. Needs 1 <= n <= V."""
    w = _weights(weights)
    require(1 <= n <= w.shape[1], f"n must be in [1, V = {w.shape[1]}], got {n}.")
    return torch.sort(-w.double(), dim=1, stable=True).indices[:, :n]


def topic_words_table(weights, vocabulary: Sequence[str], n: int = 10) -> list[str]:
    """One line per topic, "k: w_1 w_2 ... w_n": topic k's ``top_words``, written with ``vocabulary``
    (the V words, in the weights' column order), k counted from 0 as the weights' rows."""
    words, columns = top_words(weights, n), _weights(weights).shape[1]
    require(len(vocabulary) == columns,
            f"the vocabulary has {len(vocabulary)} words and the weights {columns} columns: "
            f"give the vocabulary of the data the model was trained on (data.vocabulary).")
    return [f"{k}: " + " ".join(str(vocabulary[i]) for i in row.tolist()) for k, row in enumerate(words)]


def coherence(weights, reference_counts, n: int = 10, never_together: float = -1.0) -> dict:
    """Topic coherence: each topic's NPMI over the reference corpus, and the mean over topics.

    The n ``top_words`` of each topic are scored by ``scores.npmi`` on ``reference_counts``, a (D, V)
    document-word count matrix, by document co-occurrence: p(w) = (documents holding w) / D,
    p(w_i, w_j) = (documents holding both) / D, NPMI(w_i, w_j) = log(p_ij / (p_i p_j)) / (-log p_ij),
    a topic's score the mean over its n(n-1)/2 pairs, a pair never together scored
    ``never_together`` (-1, its limit; 0 reproduces the scripts that score it 0). The number depends
    on the reference corpus: say which (the training documents, the test documents, another corpus).

    Returns ``scores.npmi``'s dict (``npmi``: the mean over topics; ``per_topic``; ``per_pair``;
    ``missing_words``; ``documents``; ``never_together``) with ``top_words`` (the (K, n) ids, as lists)
    and ``n``."""
    require(n >= 2, f"coherence scores pairs of top words: n must be >= 2, got {n}.")
    words = top_words(weights, n)
    result = npmi(words.numpy(), reference_counts, never_together=never_together)
    return {**result, "top_words": words.tolist(), "n": n}


def _document_totals(counts) -> tuple[np.ndarray, np.ndarray]:
    """Per document d: (N_d = sum_i x_di, sum_i log x_di!), float64, from a (D, V) count matrix."""
    if hasattr(counts, "tocsr"):  # SciPy sparse: only the stored counts (log 0! = 0)
        m = counts.tocsr().astype(np.float64)
        totals = np.asarray(m.sum(axis=1), dtype=np.float64).reshape(-1)
        m.data = _log_factorial(m.data)
        return totals, np.asarray(m.sum(axis=1), dtype=np.float64).reshape(-1)
    x = _dense(counts)
    require(x.dim() == 2, f"counts must be a (documents, words) matrix, got shape {tuple(x.shape)}.")
    return x.sum(1).numpy(), torch.lgamma(x + 1).sum(1).numpy()


def perplexity(log_px, counts) -> float:
    """exp(- sum_d log p(w_d) / sum_d N_d): the per-word perplexity of the documents ``counts``.

    ``log_px``: (D,) log p(x_d) of each document's count vector x_d (a row of ``counts``, N_d =
    sum_i x_di words) under a multinomial likelihood: that includes the multinomial coefficient
    log(N_d! / prod_i x_di!), the number of word orders with those counts. Perplexity is
    conventionally of the word sequence w_d, log p(w_d) = log p(x_d) - log(N_d! / prod_i x_di!),
    and that is what is used here. From an ELBO (a lower bound on log p(x_d)) the result is an upper
    bound on the model's perplexity; from an importance-sampled estimate, closer to it. Lower is
    better; a model that gives every word probability 1/V scores V."""
    log_px = np.asarray(log_px.detach().cpu() if isinstance(log_px, torch.Tensor) else log_px,
                        dtype=np.float64).reshape(-1)
    totals, log_factorials = _document_totals(counts)
    require(log_px.shape[0] == totals.shape[0],
            f"log_px has {log_px.shape[0]} documents and counts {totals.shape[0]}: give one log p(x_d) per row.")
    words = totals.sum()
    require(words > 0, "perplexity is per word: the documents hold no words.")
    log_coefficient = _log_factorial(totals) - log_factorials
    return math.exp(-(log_px - log_coefficient).sum() / words)


def unigram_log_probability(train_counts, test_counts) -> torch.Tensor:
    """(D,) log p(x_d) of each test document under the unigram model of the training documents.

    p_i = (c_i + 1) / (C + V): word i's count c_i over all training documents, add-one (Laplace)
    smoothed so that a word unseen in training has a non-zero probability (C = sum_i c_i, V the
    vocabulary size); then log p(x_d) = log(N_d! / prod_i x_di!) + sum_i x_di log p_i, a multinomial
    with the coefficient included, like a VAE's multinomial log p(x) (so ``perplexity`` takes it the
    same way). No topic, no document: the floor any topic model must beat."""
    train_totals = _column_totals(train_counts)
    log_p = np.log(train_totals + 1.0) - math.log(train_totals.sum() + train_totals.shape[0])
    require(_shape(test_counts)[1] == train_totals.shape[0],
            f"train and test counts must share the vocabulary: {train_totals.shape[0]} and "
            f"{_shape(test_counts)[1]} words.")
    if hasattr(test_counts, "tocsr"):
        x = test_counts.tocsr().astype(np.float64)
        word_term = np.asarray(x @ log_p, dtype=np.float64).reshape(-1)
    else:
        word_term = (_dense(test_counts) @ torch.from_numpy(log_p)).numpy()
    totals, log_factorials = _document_totals(test_counts)
    log_coefficient = _log_factorial(totals) - log_factorials
    return torch.from_numpy(log_coefficient + word_term)


def _log_factorial(values: np.ndarray) -> np.ndarray:
    """log(v!) = log Gamma(v + 1), elementwise, float64."""
    return torch.lgamma(torch.from_numpy(np.asarray(values, dtype=np.float64)) + 1.0).numpy()


def _shape(counts) -> tuple[int, int]:
    return tuple(counts.shape)


def _column_totals(counts) -> np.ndarray:
    """c_i = sum_d x_di, float64."""
    if hasattr(counts, "tocsr"):
        return np.asarray(counts.sum(axis=0), dtype=np.float64).reshape(-1)
    x = _dense(counts)
    require(x.dim() == 2, f"counts must be a (documents, words) matrix, got shape {tuple(x.shape)}.")
    return x.sum(0).numpy()


def _dense(counts) -> torch.Tensor:
    """A dense numpy or torch count matrix as a float64 CPU tensor."""
    if isinstance(counts, torch.Tensor):
        return counts.detach().cpu().to_dense().double()
    return torch.as_tensor(np.asarray(counts, dtype=np.float64))
