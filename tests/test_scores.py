"""Task metrics (pyro_vae/scores.py) on inputs whose answer is known.

The disentanglement metrics are checked on encoders whose scores follow from the definitions:

* the identity encoder z = v (each factor on its own coordinate) and its permutations;
* a rotation mixing two factors, z1 = (v1 + v2)/sqrt 2, z2 = (v1 - v2)/sqrt 2, z3 = v3;
* a factor duplicated on two coordinates; one latent coordinate;
* latents independent of the factors.

Most use the full factorial grid of factor sizes (5, 5, 4), each of the 100 combinations repeated:
on it the factors are exactly independent in the sample, so the plug-in mutual information of two
different factors is exactly 0 and MIG's values can be derived to the last digit.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.scores import dci, factorvae_score, mig, npmi, sap, with_stderr

SIZES = (5, 5, 4)
ROOT2 = math.sqrt(2.0)


def grid(repeats: int = 12) -> np.ndarray:
    """Every combination of factor values (SIZES), each `repeats` times: (100 * repeats, 3) ints."""
    axes = np.meshgrid(*[np.arange(s) for s in SIZES], indexing="ij")
    return np.tile(np.stack(axes, axis=-1).reshape(-1, len(SIZES)), (repeats, 1))


def rotation(v: np.ndarray) -> np.ndarray:
    return np.stack([(v[:, 0] + v[:, 1]) / ROOT2, (v[:, 0] - v[:, 1]) / ROOT2, v[:, 2]], axis=1)


def entropy(counts) -> float:
    counts = np.asarray(counts, dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def random_factors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)


def mixed_latents(v: np.ndarray, seed: int = 1) -> np.ndarray:
    """A noisy, partly mixed encoder plus one pure-noise coordinate (no exact ties, no bin edges)."""
    rng = np.random.default_rng(seed)
    mixing = np.array([[1.0, 0.3, 0.0, 0.0], [0.0, 1.0, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return v @ mixing + rng.normal(scale=0.3, size=(v.shape[0], 4))


# ----------------------------------------------------------------------------------------------
# MIG


def test_mig_of_the_identity_is_one_exactly():
    v = grid()
    result = mig(v.astype(float), v)
    # Each coordinate's 20 bins separate its factor's values, so I(z_k; v_k) = H(v_k); on the full
    # grid the other factors are independent of v_k in the sample, so I(z_j; v_k) = 0 exactly.
    mi = np.array(result["mutual_information"])
    assert np.allclose(np.diag(mi), [math.log(5), math.log(5), math.log(4)], rtol=0, atol=1e-12)
    assert (mi[~np.eye(3, dtype=bool)] == 0).all()
    assert result["entropy"] == pytest.approx([math.log(5), math.log(5), math.log(4)], abs=1e-12)
    assert result["per_factor"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert result["mig"] == pytest.approx(1.0, abs=1e-12)
    assert result["excluded_factors"] == []
    json.dumps(result)


def test_mig_of_a_permuted_identity_equals_the_identity():
    v = grid()
    assert mig(v[:, [2, 0, 1]].astype(float), v)["mig"] == pytest.approx(1.0, abs=1e-12)


def test_mig_of_a_factor_duplicated_on_two_coordinates_is_zero_for_that_factor():
    v = grid()
    z = np.stack([v[:, 0], v[:, 0], v[:, 1], v[:, 2]], axis=1).astype(float)
    result = mig(z, v)
    # v1 on z1 and z2: I_(1) = I_(2) = H(v1), gap 0; v2, v3 alone on their coordinates: gap 1.
    assert result["per_factor"] == pytest.approx([0.0, 1.0, 1.0], abs=1e-12)
    assert result["mig"] == pytest.approx(2 / 3, abs=1e-12)


def test_mig_of_the_rotation_is_one_third_as_derived():
    v = grid()
    result = mig(rotation(v), v)
    # z1 = (v1 + v2)/sqrt 2 takes the 9 values of s = v1 + v2, 2.5 bins apart (20 bins over its
    # range), so its bins are s itself: I(z1; v1) = H(s) - H(s | v1) = H(s) - H(v2), with s's counts
    # on the grid 1,2,3,4,5,4,3,2,1 (per 25). z2 = (v1 - v2)/sqrt 2 has the mirrored distribution,
    # so I(z2; v1) is the same number: v1's gap is 0, and by symmetry v2's; v3 alone on z3: gap 1.
    expected = entropy([1, 2, 3, 4, 5, 4, 3, 2, 1]) - math.log(5)
    mi = np.array(result["mutual_information"])
    assert mi[0, 0] == pytest.approx(expected, abs=1e-12) and mi[1, 0] == pytest.approx(expected, abs=1e-12)
    assert mi[0, 1] == pytest.approx(expected, abs=1e-12) and mi[1, 1] == pytest.approx(expected, abs=1e-12)
    assert result["per_factor"] == pytest.approx([0.0, 0.0, 1.0], abs=1e-12)
    assert result["mig"] == pytest.approx(1 / 3, abs=1e-12)


def test_mig_with_one_latent_coordinate_takes_the_top_information_as_the_gap():
    v = grid()
    result = mig(v[:, :1].astype(float), v)
    # gap = I_(1)/H: 1 for v1 (its own coordinate), 0 for v2 and v3 (independent on the grid)
    assert result["per_factor"] == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    assert result["mig"] == pytest.approx(1 / 3, abs=1e-12)


def test_mig_excludes_a_factor_with_a_single_value_and_says_so():
    v = grid()
    with_constant = np.concatenate([v, np.full((v.shape[0], 1), 7)], axis=1)
    result = mig(v.astype(float), with_constant)
    assert result["excluded_factors"] == [3]
    assert result["per_factor"][3] is None and result["entropy"][3] == 0.0
    assert result["mig"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(DataError, match="single value"):
        mig(v.astype(float), np.zeros((v.shape[0], 2), dtype=int))


def test_mig_of_independent_latents_is_near_zero():
    v = random_factors(2000)
    z = np.random.default_rng(3).normal(size=(2000, 3))
    # Each plug-in I(z_j; v_k) of independent variables is its bias, about (bins-1)(K-1)/(2N)
    # = 0.019 nats here, plus noise of about sqrt(2 (bins-1)(K-1))/(2N) = 0.003 nats; the gap
    # between two of them is noise-sized, / H(v) >= log 4: about 0.002. Tolerance 0.02 (~10 sd).
    assert mig(z, v)["mig"] < 0.02


# ----------------------------------------------------------------------------------------------
# DCI


def test_dci_of_the_identity_is_near_one_and_of_the_rotation_lower():
    v = grid()
    ident = dci(v.astype(float), v)
    # Informativeness: each factor is a monotone function of one standardized coordinate; the
    # held-out points are values seen in training, and the fit classifies them all (accuracy 1).
    assert ident["informativeness"] == 1.0 and ident["informativeness_train"] == 1.0
    assert all(ident["converged"])
    # D, C: the importance of z_j != z_k for v_k is not exactly 0 only because the random training
    # split (900 of the 1,200 grid points) breaks the grid's exact independence (sample correlations
    # ~1/sqrt(900)), which L2-regularized weights turn into off-diagonal importances about 100
    # times smaller than the diagonal ones: entropy of (1 - 2e, e, e) in base 3 for e = 0.003 is
    # about 0.03. Tolerance: D, C >= 0.95 (measured 0.979).
    assert ident["disentanglement"] >= 0.95 and ident["completeness"] >= 0.95
    r = np.array(ident["importance"])
    assert (np.argmax(r, axis=0) == [0, 1, 2]).all()

    rot = dci(rotation(v), v)
    # v1 = (z1 + z2)/sqrt 2 is linear in the codes, so the rotation is as informative...
    assert rot["informativeness"] == 1.0
    # ...but v1 and v2 each need z1 and z2 about equally: were their importances exactly equal (a,
    # a; a, a) and z3 used by v3 alone, the two mixed codes would have 1 - H_3(1/2, 1/2) = 0.369,
    # D = (4a * 0.369 + R33) / (4a + R33) ~ 0.55 for a ~ R33 / 1.6 (measured 0.51).
    assert rot["disentanglement"] < 0.6 and rot["completeness"] < 0.6
    assert rot["disentanglement"] < ident["disentanglement"] - 0.3
    assert rot["completeness"] < ident["completeness"] - 0.3


def test_dci_of_independent_latents_is_small_and_informativeness_at_chance():
    v = random_factors(2000)
    z = np.random.default_rng(3).normal(size=(2000, 3))
    result = dci(z, v)
    # The fitted weights are sampling noise: every importance is small and of the same order, so
    # each code's distribution over factors (and each factor's over codes) is near uniform and its
    # 1 - H near 0 (measured about 0.1). Tolerance 0.25, against >= 0.95 for the identity.
    assert result["disentanglement"] < 0.25 and result["completeness"] < 0.25
    # Accuracy at chance: (1/5 + 1/5 + 1/4) / 3 = 0.217 when guessing, a little above it when
    # always naming the majority class; the held-out accuracy's sd is about 0.02.
    assert abs(result["informativeness"] - 0.217) < 0.06
    assert np.abs(result["importance"]).max() < 0.5


def test_dci_excludes_a_constant_factor_and_is_seeded():
    v = grid(6)
    with_constant = np.concatenate([v, np.zeros((v.shape[0], 1), dtype=int)], axis=1)
    z = mixed_latents(v)
    result = dci(z, with_constant)
    assert result["excluded_factors"] == [3] and result["accuracy_test"][3] is None
    assert [row[3] for row in result["importance"]] == [0.0] * 4
    plain = dci(z, v)
    assert result["disentanglement"] == pytest.approx(plain["disentanglement"], abs=1e-12)
    other = dci(z, v, seed=5)
    assert other == dci(z, v, seed=5)  # the same seed, the same numbers
    assert other["importance"] != plain["importance"]  # another seed, another split


# ----------------------------------------------------------------------------------------------
# SAP


def test_sap_of_the_identity_is_near_one_of_the_rotation_one_third_of_noise_near_zero():
    v = grid()
    ident = sap(v.astype(float), v)
    # S[k, k] = 1 (the nearest class mean of z_k = v_k is its own value). An uninformative
    # coordinate's chance-adjusted balanced accuracy is 0 in expectation; each class's recall has
    # variance ~ (1 - 1/K) / n_test, so the score's sd is ~ 1 / sqrt((K - 1) n_test) = 0.03 for
    # K = 5 and 300 held-out points; clipped at 0, the larger of two such scores is ~0.02 on
    # average, and each gap is 1 minus that. Tolerance: SAP >= 0.97 (measured 0.9993).
    assert ident["sap"] >= 0.97 and ident["sap"] <= 1.0
    s = np.array(ident["score_matrix"], dtype=float)
    assert np.diag(s) == pytest.approx([1.0, 1.0, 1.0])
    assert ((s >= 0) & (s <= 1)).all()

    rot = sap(rotation(v), v)
    # v1 is predicted from z1 and from z2 equally well in expectation (mirror images on the grid),
    # so its gap is noise; likewise v2; v3's gap is 1: SAP ~ (0 + 0 + 1)/3, each noise gap being a
    # difference of two held-out scores (sd ~0.03). Tolerance 0.06 (measured 0.345).
    assert rot["per_factor"][2] == pytest.approx(1.0)
    assert abs(rot["sap"] - 1 / 3) < 0.06

    noise = sap(np.random.default_rng(3).normal(size=(2000, 3)), random_factors(2000))
    # every score is max(0, noise of sd ~0.03): gaps of a few hundredths (measured 0.011)
    assert noise["sap"] < 0.05


# ----------------------------------------------------------------------------------------------
# FactorVAE score


def identity_represent(seed: int = 0, noise_coordinates: int = 2):
    """The factors as floats plus pure-noise coordinates (its own generator: the same sequence of
    calls gives the same latents)."""
    rng = np.random.default_rng(seed)
    return lambda f: np.concatenate([f.astype(float), rng.normal(size=(f.shape[0], noise_coordinates))], axis=1)


def test_factorvae_score_of_the_identity_is_one():
    result = factorvae_score(identity_represent(), SIZES)
    # Fixing v_k makes z_k constant in the batch (normalized variance 0); the other factor
    # coordinates vary unless all 64 draws agree (probability 4^-63), the noise ones always: every
    # vote names k's coordinate, and the table is diagonal.
    assert result["score"] == 1.0 and result["train_accuracy"] == 1.0
    votes = np.array(result["votes_train"])
    assert votes.shape == (5, 3) and (votes[:3] == np.diag(np.diag(votes[:3]))).all() and (votes[3:] == 0).all()
    assert sum(map(sum, result["votes_eval"])) == 400 and votes.sum() == 800
    assert result["classifier"][:3] == [0, 1, 2] and all(result["active"])
    json.dumps(result)


def test_factorvae_score_of_the_rotation_is_two_thirds_and_of_noise_chance():
    def rotated(f):
        return rotation(f)

    result = factorvae_score(rotated, SIZES)
    # Fixing v1: Var(z1) = Var(z2) = Var(v2)/2 in the batch, exactly equal, so z1 or z2 takes all
    # of v1's votes (whichever has the larger global variance estimate), and likewise v2's: one
    # coordinate gets both factors' votes and can name only one. v3's votes (1/3) are right, and
    # half of the other 2/3: score ~ 1/3 + 1/3 = 2/3, with sd ~ sqrt(2/9/400) = 0.024. Tolerance 0.08.
    assert abs(result["score"] - 2 / 3) < 0.08

    rng = np.random.default_rng(9)
    noise = factorvae_score(lambda f: rng.normal(size=(f.shape[0], 4)), SIZES)
    # argmin is a random coordinate whatever k: the majority of a coordinate's training votes
    # predicts an independent evaluation vote with probability 1/3; sd sqrt(2/9/400) = 0.024.
    assert abs(noise["score"] - 1 / 3) < 0.1


def test_factorvae_score_is_seeded_drops_collapsed_coordinates_and_uses_sample_factors():
    first = factorvae_score(identity_represent(), SIZES, seed=3, train_votes=50, eval_votes=30)
    assert first == factorvae_score(identity_represent(), SIZES, seed=3, train_votes=50, eval_votes=30)

    def with_collapsed(f):  # a coordinate that barely moves (std 0.01 < 0.05): dropped, gets no vote
        rng = np.random.default_rng(int(f.sum()))
        return np.concatenate([f.astype(float), 0.01 * rng.normal(size=(f.shape[0], 1))], axis=1)

    result = factorvae_score(with_collapsed, SIZES, train_votes=50, eval_votes=30)
    assert result["active"] == [True, True, True, False] and result["classifier"][3] is None
    assert result["votes_train"][3] == [0, 0, 0] and result["score"] == 1.0

    seen = []

    def only_even(n, rng):
        rows = np.stack([2 * rng.integers(0, 3, n), rng.integers(0, 5, n), rng.integers(0, 4, n)], axis=1)
        seen.append(rows)
        return rows

    factorvae_score(identity_represent(), SIZES, sample_factors=only_even, train_votes=20, eval_votes=10)
    assert all((rows[:, 0] % 2 == 0).all() for rows in seen)
    with pytest.raises(DataError, match="sample_factors"):
        factorvae_score(identity_represent(), SIZES, sample_factors=lambda n, rng: np.zeros((n, 2), dtype=int))
    with pytest.raises(ConfigError, match="factor_sizes"):
        factorvae_score(identity_represent(), [5, 0, 4])


# ----------------------------------------------------------------------------------------------
# invariances


PERMUTATION = [2, 0, 3, 1]
SCALE = np.array([2.0, -0.5, 3.0, -7.0])
SHIFT = np.array([1.0, -2.0, 0.5, 10.0])


def transformed(z: np.ndarray) -> np.ndarray:
    return z[:, PERMUTATION] * SCALE + SHIFT


def test_permuting_rescaling_and_shifting_the_codes_changes_no_score():
    v = random_factors(1500)
    z = mixed_latents(v)
    t = transformed(z)

    before, after = mig(z, v), mig(t, v)
    assert after["mig"] == pytest.approx(before["mig"], abs=1e-12)
    permuted = np.array(before["mutual_information"])[PERMUTATION]
    assert np.array(after["mutual_information"]) == pytest.approx(permuted, abs=1e-12)

    before, after = sap(z, v), sap(t, v)
    assert after["sap"] == pytest.approx(before["sap"], abs=1e-12)
    assert np.array(after["score_matrix"]) == pytest.approx(np.array(before["score_matrix"])[PERMUTATION], abs=1e-12)

    before, after = dci(z, v), dci(t, v)
    # the same split (the canonical order does not see these maps) and the same standardized
    # inputs up to sign and rounding: the same optimum, up to the solver's tolerance
    for key in ("disentanglement", "completeness", "informativeness"):
        assert after[key] == pytest.approx(before[key], abs=1e-6), key
    assert np.array(after["importance"]) == pytest.approx(np.array(before["importance"])[PERMUTATION], abs=1e-6)
    assert before["disentanglement"] < 0.95  # a case where the importances are not trivial

    def represent(seed):
        base = identity_represent(seed, noise_coordinates=1)
        mixing = np.array([[1.0, 0.3, 0.0, 0.0], [0.0, 1.0, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
        return lambda f: base(f) @ mixing + 0.1 * np.random.default_rng(int(f.sum())).normal(size=(f.shape[0], 4))

    plain = represent(0)
    before = factorvae_score(plain, SIZES, train_votes=200, eval_votes=100)
    moved = represent(0)
    after = factorvae_score(lambda f: transformed(moved(f)), SIZES, train_votes=200, eval_votes=100)
    assert after["score"] == before["score"]
    assert after["votes_train"] == np.array(before["votes_train"])[PERMUTATION].tolist()


def test_the_order_of_the_datapoints_changes_no_score_bit_for_bit():
    v = random_factors(1200)
    z = mixed_latents(v)
    order = np.random.default_rng(7).permutation(v.shape[0])
    assert mig(z[order], v[order]) == mig(z, v)
    assert sap(z[order], v[order]) == sap(z, v)
    assert dci(z[order], v[order]) == dci(z, v)
    assert with_stderr(mig, z[order], v[order], resamples=5) == with_stderr(mig, z, v, resamples=5)


def test_torch_tensors_give_the_numbers_of_numpy_arrays():
    v = random_factors(600)
    z = mixed_latents(v)
    assert mig(torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(v)) == mig(z, v)
    assert sap(torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(v)) == sap(z, v)


# ----------------------------------------------------------------------------------------------
# bootstrap standard errors


def test_with_stderr_is_seeded_and_shrinks_with_n():
    def noisy(n, seed):
        v = random_factors(n, seed)
        return v + np.random.default_rng(seed + 1).normal(scale=0.5, size=v.shape), v

    z, v = noisy(400, 0)
    first = with_stderr(mig, z, v, resamples=20, seed=1)
    assert first == with_stderr("mig", z, v, resamples=20, seed=1)
    assert first["bootstrap"] != with_stderr(mig, z, v, resamples=20, seed=2)["bootstrap"]
    assert first["value"]["mig"] == mig(z, v)["mig"] and len(first["bootstrap"]["mig"]) == 20
    big = with_stderr(mig, *noisy(3200, 0), resamples=20, seed=1)
    # a standard error ~ 1/sqrt(N): 8 times the data, about sqrt 8 = 2.8 times smaller; asserted
    # at least 1/0.6 = 1.7 times (the bootstrap's own error with 20 resamples is ~16%)
    assert 0 < big["stderr"]["mig"] < 0.6 * first["stderr"]["mig"]
    json.dumps(first)

    d = with_stderr(dci, z, v, resamples=3, seed=0, l2=0.01)
    assert set(d["stderr"]) == {"disentanglement", "completeness", "informativeness"}
    assert d["result"]["l2"] == 0.01 and all(s > 0 for s in d["stderr"].values())
    with pytest.raises(ConfigError, match="mig, dci or sap"):
        with_stderr(factorvae_score, z, v)


# ----------------------------------------------------------------------------------------------
# NPMI


def hand_corpus() -> np.ndarray:
    """8 documents, 8 words (counts above 1 count as presence):

    w0, w1 in docs 0-3 (always together); w2 in docs 4-7 (never with w0); w3 in docs 0, 1, 4, 5
    (independent of w0: p03 = 2/8 = p0 p3); w4 in doc 0 only; w5 and w6 in every document; w7 in none.
    """
    x = np.zeros((8, 8), dtype=np.int64)
    x[0:4, 0] = [1, 3, 1, 2]
    x[0:4, 1] = 1
    x[4:8, 2] = 2
    x[[0, 1, 4, 5], 3] = 1
    x[0, 4] = 5
    x[:, 5] = 1
    x[:, 6] = 4
    return x


TOPICS = np.array([[0, 1], [0, 2], [0, 3], [3, 0]])


def test_npmi_of_words_together_apart_and_independent():
    result = npmi(TOPICS, hand_corpus())
    # always together: log(p / p^2) / -log p = 1; never together: -1 (the convention, NPMI's limit
    # as p_ij -> 0); independent: log 1 = 0, whichever order the pair is in
    assert result["per_topic"] == [1.0, -1.0, 0.0, 0.0]
    assert result["npmi"] == 0.0
    assert result["missing_words"] == [] and result["documents"] == 8
    json.dumps(result)


def test_npmi_of_a_mixed_topic_and_the_end_conventions():
    # topic (w0, w3, w4): (w0, w3) independent -> 0; (w0, w4): p = 1/8, p0 p4 = 1/2 * 1/8 = 1/16,
    # log 2 / log 8 = 1/3; (w3, w4): p = 1/8 (doc 0), p3 p4 = 1/16 -> 1/3. Mean (0 + 1/3 + 1/3)/3 = 2/9.
    # (w5, w6) in every document: p_ij = 1, NPMI = 1 by convention; (w0, w7): w7 in no document -> -1.
    topics = np.array([[0, 3, 4], [5, 6, 0], [0, 7, 1]])
    result = npmi(topics, hand_corpus())
    assert result["per_pair"][0] == pytest.approx([0.0, 1 / 3, 1 / 3], abs=1e-15)
    assert result["per_topic"][0] == pytest.approx(2 / 9, abs=1e-15)
    # (w5, w6) -> 1; (w5, w0): p = 1/2 = p5 p0 = 1 * 1/2 -> 0; (w6, w0) -> 0
    assert result["per_pair"][1] == pytest.approx([1.0, 0.0, 0.0], abs=1e-15)
    # (w0, w7) -> -1, (w0, w1) -> 1, (w7, w1) -> -1
    assert result["per_pair"][2] == [-1.0, 1.0, -1.0]
    assert result["npmi"] == pytest.approx((2 / 9 + 1 / 3 - 1 / 3) / 3, abs=1e-15)
    assert result["missing_words"] == [7]
    lau = npmi(topics, hand_corpus(), never_together=0.0)  # the scripts that score never-together as 0
    assert lau["per_pair"][2] == [0.0, 1.0, 0.0]


def test_npmi_reads_numpy_torch_and_scipy_sparse_alike():
    sparse = pytest.importorskip("scipy.sparse")
    x = hand_corpus()
    topics = np.array([[0, 3, 4], [0, 1, 2], [2, 3, 5]])
    expected = npmi(topics, x)
    for reference in (torch.as_tensor(x), torch.as_tensor(x).to_sparse(), sparse.csr_matrix(x), sparse.csc_matrix(x)):
        assert npmi(torch.as_tensor(topics), reference) == expected


def test_npmi_on_a_large_sparse_corpus_matches_the_definition_pair_by_pair():
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    x = sparse.random(7500, 2000, density=0.01, format="csr", random_state=0,
                      data_rvs=lambda n: rng.poisson(2, n) + 1).astype(np.int64)
    topics = np.stack([rng.choice(2000, 10, replace=False) for _ in range(50)])
    result = npmi(topics, x)
    assert len(result["per_topic"]) == 50 and all(len(p) == 45 for p in result["per_pair"])
    dense = (x.toarray() > 0)
    pair = 2 * 10 - 2 * 3 // 2 + (7 - 2 - 1)  # (2, 7) in the order (0,1), ..., (0,9), (1,2), ...: the 21st
    assert (np.triu_indices(10, 1)[0][pair], np.triu_indices(10, 1)[1][pair]) == (2, 7)
    for t in (0, 17, 49):
        a, b = topics[t, 2], topics[t, 7]
        p_a, p_b, p_ab = dense[:, a].mean(), dense[:, b].mean(), (dense[:, a] & dense[:, b]).mean()
        expected = -1.0 if p_ab == 0 else math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)
        assert result["per_pair"][t][pair] == pytest.approx(expected, abs=1e-12)
    assert npmi(topics, x.toarray())["per_topic"] == pytest.approx(result["per_topic"], abs=1e-12)


def test_npmi_refuses_bad_topics():
    x = hand_corpus()
    with pytest.raises(DataError, match="repeats a word"):
        npmi(np.array([[0, 0]]), x)
    with pytest.raises(DataError, match="outside"):
        npmi(np.array([[0, 8]]), x)
    with pytest.raises(DataError, match="2-D"):
        npmi(np.array([0, 1]), x)
    with pytest.raises(DataError, match="integer"):
        npmi(np.array([[0.0, 1.0]]), x)
    with pytest.raises(DataError, match="negative"):
        npmi(np.array([[0, 1]]), -x)


# ----------------------------------------------------------------------------------------------
# refused input


@pytest.mark.parametrize("metric", [mig, dci, sap])
def test_bad_input_is_refused_with_a_clear_data_error(metric):
    v = grid(1)
    z = v.astype(float)
    with pytest.raises(DataError, match="integer factor indices"):
        metric(z, v + 0.5)
    with pytest.raises(DataError, match="100 datapoints and factors 99"):
        metric(z, v[:99])
    bad = z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        metric(bad, v)
    with pytest.raises(DataError, match=r"2-D array \(N datapoints, L latent coordinates\).*reshape"):
        metric(z[:, 0], v)
    with pytest.raises(DataError, match=r"2-D array \(N datapoints, F factors\)"):
        metric(z, v[:, 0])


def test_bad_options_are_refused_with_a_config_error():
    v = grid(1)
    with pytest.raises(ConfigError, match="bins"):
        mig(v.astype(float), v, bins=1)
    with pytest.raises(ConfigError, match="test_fraction"):
        sap(v.astype(float), v, test_fraction=1.5)
    with pytest.raises(ConfigError, match="l2"):
        dci(v.astype(float), v, l2=0)
