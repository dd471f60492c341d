"""Pictures of a run: prior samples, reconstructions, learning curves, the latent space.

Images show E[x|z], the likelihood's mean, clamped to [0, 1] for display only. They come from the
model program itself (``Program.decode``, ``Program.prior_draws``): for a program other than the
stock VAE, its model is run with the latents given and E[x|z] read off its site "x".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .files import atomic_write
from .numerics import seeded
from .programs import as_program

if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import Evaluation
    from .trained import Run


def _save(fig, path: Path, **options) -> Path:
    """The figure as a PNG at ``path``, written whole or not at all (``files.atomic_write``)."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", **options))
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


GRID_MIN_SIDE = 84  # screen pixels per image at least: each image pixel becomes an integer square of them
CAPTION_LINE = 14  # screen pixels per caption line (Pillow's default font)


def _caption_font():
    """The captions' font: DejaVu Sans at 11 px, which matplotlib ships (Pillow's built-in bitmap font
    drops colons and narrows spaces to nothing); Pillow's default where it cannot be read."""
    import importlib.util

    from PIL import ImageFont

    try:  # (found in matplotlib's data without importing matplotlib: a picture command stays quick to start)
        spec = importlib.util.find_spec("matplotlib")
        folder = Path(next(iter(spec.submodule_search_locations)))
        return ImageFont.truetype(str(folder / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"), 11)
    except (OSError, ValueError, ImportError, AttributeError, TypeError, StopIteration):
        return ImageFont.load_default()


def tile(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Images (N, C, H, W) as one (3, H', W') grid, ``nrow`` a row, ``padding`` pixels of
    ``pad_value`` between and around them (one channel shown as grey): torchvision's ``make_grid``
    layout, without importing torchvision."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value, dtype=images.dtype)
    for k in range(n):
        top, left = (k // cols) * (h + padding) + padding, (k % cols) * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = images[k]
    return grid


def grid_picture(images: torch.Tensor, nrow: int, title: str):
    """Images (N, C, H, W) in [0, 1] as one picture, pixel-exact: the grid (2-pixel white gaps)
    upscaled by the integer that makes each image at least ``GRID_MIN_SIDE`` pixels high, nearest
    neighbour, under a caption; returns (the PIL image, the caption's height, the scale)."""
    import textwrap

    from PIL import Image, ImageDraw

    grid = tile(images.detach().float().clamp(0, 1).cpu(), nrow)
    scale = max(1, math.ceil(GRID_MIN_SIDE / images.shape[-2]))
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    body = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    font = _caption_font()
    lines = textwrap.wrap(title, max(20, body.width // 7)) or [""]
    top = CAPTION_LINE * len(lines) + 6
    picture = Image.new("RGB", (body.width, body.height + top), "white")
    draw = ImageDraw.Draw(picture)
    for i, line in enumerate(lines):
        draw.text((3, 3 + CAPTION_LINE * i), line, fill="black", font=font)
    picture.paste(body, (0, top))
    return picture, top, scale


def save_grid(images: torch.Tensor, path: Path, nrow: int, title: str, view: list[int] | None = None) -> Path:
    """Save datapoints as one picture with a caption: images (N, C, H, W) as a pixel-exact grid
    (:func:`grid_picture`); vectors (N, D) shown as images of shape ``view`` ([H, W] or [C, H, W],
    ``data.view``: as many values as D, scaled to [0, 1] by their range where they leave it), or
    without a view as a heat map, one row per datapoint and a column per feature, in the data's own
    units (:func:`vector_picture`)."""
    images = images.detach().float().cpu()
    if view:
        images = as_view(images, view)
    if images.dim() != 4:
        return vector_picture(images.reshape(len(images), -1), path, title)
    picture, _, _ = grid_picture(images, nrow, title)
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
    return Path(path)


def as_view(x: torch.Tensor, view: list[int]) -> torch.Tensor:
    """Datapoints (N, ...) as images of shape ``view`` ([H, W]: one channel, or [C, H, W]), scaled
    to [0, 1] by their own range where they are not already in it; refused where the numbers differ."""
    from .errors import ConfigError

    view = [1, *view] if len(view) == 2 else list(view)
    if len(view) != 3 or math.prod(view) != x[0].numel():
        raise ConfigError(f"data.view = {view}: each datapoint holds {x[0].numel()} values, which a view of "
                          f"{math.prod(view)} ([H, W] or [C, H, W]) cannot show; give a view of exactly that many.")
    x = x.reshape(len(x), *view)
    low, high = x.min(), x.max()
    if low < 0 or high > 1:
        x = (x - low) / (high - low).clamp_min(1e-12)
    return x


def vector_picture(rows: torch.Tensor, path: Path, title: str) -> Path:
    """Vectors (N, D) as a heat map: a row per datapoint, a column per feature, coloured by value in
    the data's own units (a colour bar beside it)."""
    import textwrap

    plt = _pyplot()
    n, d = rows.shape
    fig, ax = plt.subplots(figsize=(min(12.0, 3 + 0.12 * d), min(14.0, 1.6 + 0.14 * n)))
    shown = ax.imshow(rows.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(shown, ax=ax, label="value")
    ax.set_xlabel(f"feature (column), {d} of them")
    ax.set_ylabel("datapoint")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def shown_pixels(program) -> str:
    """What the pictures of decoded z show: "E[x|z]", or "x ~ p(x|z)" where the likelihood has no
    closed-form mean (autoregressive ones)."""
    return "E[x|z]" if as_program(program).mean_available else "x ~ p(x|z)"


@torch.no_grad()
def prior_samples(program, n: int, seed: int, pixels: str = "mean") -> torch.Tensor:
    """n images decoded from z ~ p(z): the mean E[x|z], or a draw x ~ p(x|z) if pixels == 'sample'
    (always a draw where E[x|z] has no closed form)."""
    program = as_program(program)
    with seeded(seed, next(program.module.parameters()).device):
        return program.decode(program.prior_draws(n), pixels)


@torch.no_grad()
def reconstructions(program, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """E[x|z] (or a draw, see ``shown_pixels``) at z = E_q[z|x], the posterior mean (estimated from
    samples where q has no closed form; for several latent sites, each site's mean given the
    means before it)."""
    program = as_program(program, tuple(x.shape[1:]))
    with seeded(seed, x.device):
        return program.decode(program.posterior_means(x))


@torch.no_grad()
def analogies(program, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """For a program whose model takes a label y: each input x_i, then its z = E_q[z|x_i, y_i] (at
    its own label) decoded under every class, E[x|z, y = c] for c = 0..C-1 (or a draw, see
    ``shown_pixels``): the images (n * (C + 1), ...), a row per input, the input first. What z keeps
    of x with y changed: the style of Kingma et al.'s analogies when y carries the class."""
    program = as_program(program, tuple(x.shape[1:]))
    with seeded(seed, x.device):
        z = program.labelled(y).posterior_means(x)
        rows = [program.labelled(torch.full_like(y, c)).decode(z) for c in range(program.num_classes)]
    return torch.stack([x.to(rows[0].dtype), *rows], 1).flatten(0, 1)


TRAVERSAL_STEPS = 9  # values per latent coordinate in a traversal
TRAVERSAL_RANGE = (0.02, 0.98)  # the quantiles of the test set's posterior means a traversal spans


@torch.no_grad()
def traversals(program, x: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Latent traversals of one input ``x`` (1, ...): its posterior mean z, then for each coordinate d,
    z with z_d set to ``TRAVERSAL_STEPS`` values evenly spaced between the 2% and 98% quantiles of
    coordinate d's posterior means over ``reference`` (test inputs: the range the encoder uses, whatever
    the prior), decoded (E[x|z], or a draw: see ``shown_pixels``). Returns (D * steps, ...) images, a
    row per coordinate. Refused (ValueError) for a latent that is not one continuous vector."""
    program = as_program(program, tuple(x.shape[1:]))
    with seeded(seed, x.device):
        means, spread = program.posterior_means(x), program.posterior_means(reference)
        if len(means) != 1 or next(iter(means.values())).dim() != 2 or program.discrete_latents:
            raise ValueError("traversals need one continuous latent vector z (a single site of shape (D,)).")
        (site, z), spread = next(iter(means.items())), next(iter(spread.values()))
        low, high = (torch.quantile(spread.double(), q, dim=0).to(z.dtype) for q in TRAVERSAL_RANGE)
        steps = torch.linspace(0, 1, TRAVERSAL_STEPS, dtype=z.dtype, device=z.device)
        rows = []
        for d in range(z.shape[1]):
            grid = z.expand(TRAVERSAL_STEPS, -1).clone()
            grid[:, d] = low[d] + steps * (high[d] - low[d])
            rows.append(grid)
        return program.decode({site: torch.cat(rows)})


def save_traversals(program, x: torch.Tensor, reference: torch.Tensor, path: Path, title: str,
                    seed: int = 0) -> Path:
    """:func:`traversals` of ``x`` as one picture, a row per latent coordinate (top: z_1)."""
    images = traversals(program, x, reference, seed)
    caption = (f"{title}: latent traversals of one test input, a row per coordinate z_1..z_{len(images) // TRAVERSAL_STEPS}"
               f" (top to bottom), each from the 2% to the 98% quantile of its posterior means over "
               f"{len(reference)} test inputs, the others at the input's posterior mean; {shown_pixels(program)}")
    return save_grid(images, path, TRAVERSAL_STEPS, caption)


def plot_price(points: dict[str, list[tuple[float, float]]], path: Path, score: str = "MIG") -> Path:
    """The price of disentanglement: for each compared objective, each seed's (score, test log p(x)) as a
    dot and their mean as a cross with ± 1 s.d. over seeds on both axes; up and right is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, pairs) in enumerate(points.items()):
        xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
        n = len(pairs)
        mx, my = sum(xs) / n, sum(ys) / n
        sx = math.sqrt(sum((v - mx) ** 2 for v in xs) / (n - 1)) if n > 1 else 0.0
        sy = math.sqrt(sum((v - my) ** 2 for v in ys) / (n - 1)) if n > 1 else 0.0
        ax.plot(xs, ys, "o", color=f"C{i}", alpha=0.4, markersize=4)
        ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt="x", color=f"C{i}", capsize=3, markersize=9, label=name)
    ax.set_xlabel(f"{score} (higher: more disentangled)")
    ax.set_ylabel("test log p(x), nats per datapoint")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"log p(x) against {score}: dots each seed, crosses the mean ± 1 s.d. over seeds", fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_curves(history: list[dict], path: Path) -> Path:
    """The training objective (every epoch) and the train/test ELBO with its two terms (the epochs
    that scored them: train.curve_every)."""
    fig = curves_figure(history)
    _save(fig, path, dpi=100)
    _pyplot().close(fig)
    return path


def curves_figure(history: list[dict]):
    """The figure of :func:`plot_curves`. Points are marked while there are few of them, so a run of
    one epoch shows its values (a line through one point draws nothing)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    mark = {"marker": "o", "markersize": 3} if len(history) <= 60 else {}
    ax1.plot([m["epoch"] for m in history], [m["objective"] for m in history],
             label="training objective (running mean)", **mark)
    history = [m for m in history if "test" in m]
    epochs = [m["epoch"] for m in history]
    ax1.plot(epochs, [m["train"]["elbo"] for m in history], label="train ELBO", **mark)
    ax1.plot(epochs, [m["test"]["elbo"] for m in history], label="test ELBO", **mark)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("nats per datapoint")
    ax1.set_title("bounds on log p(x)")
    ax1.legend()
    for split, style in (("train", "--"), ("test", "-")):
        ax2.plot(epochs, [m[split]["reconstruction"] for m in history], style, color="C0",
                 label=f"{split} E_q[log p(x|z)]", **mark)
        ax2.plot(epochs, [-m[split]["kl"] for m in history], style, color="C3",
                 label=f"{split} -KL(q(z|x) || p(z))", **mark)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("nats per datapoint")
    ax2.set_title("ELBO = reconstruction - KL")
    ax2.legend()
    fig.tight_layout()
    return fig


def plot_latent(means: torch.Tensor, labels: torch.Tensor | None, path: Path, given: str = "") -> Path:
    """Posterior means E_q[z|x] in 2-D: as they are if latent_dim <= 2, else their top-2 PCA projection;
    coloured by label where there are labels. ``given``: what else q is given (", y its label": E_q[z|x, y])."""
    q = f"E_q[z|x{', y' if given else ''}]"
    plt = _pyplot()
    means = means.detach().float().cpu()
    d = means.shape[1]
    if d == 1:
        xy = torch.stack([means[:, 0], torch.zeros_like(means[:, 0])], 1)
        xlabel, ylabel, title = "z", "", f"posterior means {q}{given} (1-D latent)"
    elif d == 2:
        xy, xlabel, ylabel, title = means, "z_1", "z_2", f"posterior means {q}{given}"
    else:
        centred = means - means.mean(0)
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ v[:2].T
        share = (s**2 / (s**2).sum())[:2].tolist()
        xlabel, ylabel = f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%})"
        title = f"posterior means {q}{given}, {d}-D, projected on their top-2 principal components"
    fig = plt.figure(figsize=(6.5, 5.5))
    if labels is None:
        plt.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    else:
        labels = labels.cpu()
        classes = labels.unique().tolist()
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "viridis", len(classes))
        for i, c in enumerate(classes):
            pick = labels == c
            plt.scatter(xy[pick, 0], xy[pick, 1], s=6, alpha=0.8, color=cmap(i), label=str(c))
        if len(classes) <= 20:
            plt.legend(title="label", markerscale=2, fontsize=8, loc="best")
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    plt.title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)
    return path


def run_pictures(run: "Run", result: "Evaluation", history: list[dict]) -> list[Path]:
    """samples.png, reconstructions.png, curves.png and latent.png (where the latent is one
    continuous vector) in the run folder."""
    program, out, seed = run.program, run.run_dir, run.config.seed
    program.module.eval()
    what = shown_pixels(program)
    view = run.config.data.get("view")  # how a vector datapoint is drawn (data.view), if the user said

    def save(images, name, nrow, title):
        return save_grid(images, out / name, nrow, title, view)

    if program.policy.takes_labels:  # one row per class: x ~ p(x|z, y) for y = 0, 1, ...
        classes = torch.arange(program.num_classes).repeat_interleave(8)
        paths = [save(prior_samples(program.labelled(classes), len(classes), seed), "samples.png", 8,
                      f"{what}, z ~ p(z), one row per class y = 0..{program.num_classes - 1}")]
    else:
        paths = [save(prior_samples(program, 64, seed), "samples.png", 8, f"64 samples: {what}, z ~ p(z)")]
    n_test = run.prepared.test.shape[0]
    ncol = min(8, n_test)
    spread = torch.linspace(0, n_test - 1, (min(32, n_test) // ncol) * ncol).long()  # across the (often sorted) set
    x = run.prepared.test[spread.to(run.prepared.test.device)]
    given = program.labelled(run.prepared.test_labels[spread.to(run.prepared.test_labels.device)]) \
        if program.policy.takes_labels else program  # (reconstructed through q(z|x, y) at the true label)
    recon = reconstructions(given, x, seed)
    if x.dim() == 2 and not view:  # vectors, a heat map row each: every input directly above its reconstruction
        pairs, caption = torch.stack([x, recon], 1).flatten(0, 1), "each test input, then its reconstruction"
    else:
        rows = lambda t: t.reshape(-1, ncol, *t.shape[1:])  # noqa: E731
        pairs, caption = torch.stack([rows(x), rows(recon)], 1).flatten(0, 2), "test inputs (odd rows) and reconstructions"
    paths.append(save(pairs, "reconstructions.png", ncol, f"{caption} {what}, z = E_q[z|x] (even rows)"
                      if x.dim() != 2 or view else f"{caption} {what} at z = E_q[z|x] (rows 0, 1: datapoint 0; ...)"))
    if history:
        paths.append(plot_curves(history, out / "curves.png"))
    if program.policy.takes_labels and program.labelled(run.prepared.test_labels[:1]).latent_dim is not None:
        few = spread[:: max(1, len(spread) // 8)][:8]
        y = run.prepared.test_labels[few.to(run.prepared.test_labels.device)]
        paths.append(save(analogies(program, run.prepared.test[few.to(run.prepared.test.device)], y, seed),
                          "analogies.png", program.num_classes + 1,
                          f"each row: a test input, then {what.replace('|z]', '|z, y]')} at its z = E_q[z|x, y] "
                          f"under y = 0..{program.num_classes - 1}"))
    if result.posterior_mean is not None:
        given = ", y its label" if program.policy.takes_labels else ""
        paths.append(plot_latent(result.posterior_mean, run.prepared.splits.test_labels, out / "latent.png", given))
    if result.confusion is not None:
        paths.append(plot_confusion(result.confusion, out / "confusion.png"))
    return paths


def plot_confusion(confusion: torch.Tensor, path: Path) -> Path:
    """The confusion matrix (rows: true class; columns: argmax_y q(y|x)), each row as fractions of its class."""
    plt = _pyplot()
    counts = confusion.double()
    rows = counts / counts.sum(1, keepdim=True).clamp_min(1)
    c = counts.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * c, 0.8 + 0.5 * c))
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            if counts[i, j] > 0:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class, argmax_y q(y|x)")
    ax.set_ylabel("true class")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    accuracy = counts.diag().sum() / counts.sum()
    ax.set_title(f"test accuracy {accuracy:.4f}")
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_comparison_curves(curves: dict, path: Path) -> Path:
    """Test log p(x) and ELBO against steps and against training seconds, one line per objective
    (its mean over seeds, with the band of the seeds' lowest to highest)."""
    fig = comparison_figure(curves)
    _save(fig, path, dpi=100)
    _pyplot().close(fig)
    return path


def comparison_figure_bytes(curves: dict) -> bytes:
    """:func:`comparison_figure` drawn into PNG bytes (what compare's calibration times)."""
    import io

    fig = comparison_figure(curves)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def _seed_curves(points: list) -> list[list[dict]]:
    """One objective's curves over seeds: a list of curves (a single curve is one seed's)."""
    return [points] if points and isinstance(points[0], dict) else list(points)


def _band(runs: list[list[dict]], xkey: str, key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """x (the mean over seeds), the mean, lowest and highest value over seeds at each measured point
    after the start (the untrained step-0 value, hundreds of nats below, is left out)."""
    n = min(len(r) for r in runs)
    xs, mean, lo, hi = [], [], [], []
    for i in range(n):
        if all(r[i]["step"] == 0 for r in runs) and n > 1:
            continue
        values = [r[i][key] for r in runs]
        xs.append(sum(r[i][xkey] for r in runs) / len(runs))
        mean.append(sum(values) / len(values))
        lo.append(min(values))
        hi.append(max(values))
    return xs, mean, lo, hi


def comparison_figure(curves: dict):
    """The figure of :func:`plot_comparison_curves`: from the first measured point after the start;
    the y-range set by the last half of the curves (bands included), so that curves a few nats
    apart stay apart (earlier, lower points may leave the frame at the bottom)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    seeds = max((len(_seed_curves(p)) for p in curves.values()), default=1)
    for i, (key, name) in enumerate((("test_log_px", "test log p(x) (importance sampled)"), ("test_elbo", "test ELBO"))):
        for j, (xkey, xlabel) in enumerate((("step", "training steps"), ("train_seconds", "training seconds"))):
            ax = axes[i][j]
            late: list[float] = []
            for label, points in curves.items():
                xs, mean, lo, hi = _band(_seed_curves(points), xkey, key)
                if not xs:
                    continue
                (line,) = ax.plot(xs, mean, marker=".", label=label)
                if seeds > 1:
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
                half = max(0, min(len(xs) // 2, len(xs) - 2))  # (the last half, and at least two points)
                late += lo[half:] + hi[half:]
            if late:
                lo, hi = min(late), max(late)
                pad = 0.1 * (hi - lo) + 1e-3 * max(1.0, abs(hi))
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{name}, nats per datapoint")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    band = f"; bands: lowest to highest of {seeds} seeds" if seeds > 1 else ""
    fig.suptitle("objectives on equal budgets: same model, data order and initialization" + band +
                 "\n(from the first measured point after the start; y-range: the last half of training)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_differences(paired: dict, reference: str, path: Path) -> Path:
    """Each objective's difference from the reference objective, per metric, with its paired
    error bars (see :func:`differences_figure`)."""
    fig = differences_figure(paired, reference)
    _save(fig, path, dpi=100)
    _pyplot().close(fig)
    return path


def differences_figure(paired: dict, reference: str):
    """One panel per metric (compare's ``paired_differences``): for each objective its mean
    difference from ``reference`` (nats per datapoint) with a bar of ± 2 paired standard errors, the
    thin bar ± 2 standard errors of the mean over seeds where there are several, and each seed's
    difference as a dot; a dashed line at 0 (the reference)."""
    plt = _pyplot()
    metrics = [m for m in ("log_px", "elbo", "exact_log_px") if paired.get(m)] or list(paired)[:1]
    names = {"log_px": "test log p(x)", "elbo": "test ELBO", "exact_log_px": "exact test log p(x)",
             "iwae_bound": "test IWAE bound"}
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 0.6 * max(
        (len(paired[m]) for m in metrics), default=1) + 2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = paired[metric]
        for y, (key, d) in enumerate(rows.items()):
            seeds = d["per_seed"]
            if len(seeds) > 1:
                ax.errorbar(d["mean"], y, xerr=2 * d["stderr"], fmt="none", ecolor="grey", elinewidth=1, capsize=6)
                ax.plot([s["difference"] for s in seeds], [y] * len(seeds), "o", color="grey", markersize=3)
            ax.errorbar(d["mean"], y, xerr=2 * d["paired_stderr"], fmt="o", color="C3" if d["beyond_two_stderr"] else "C0",
                        elinewidth=3, capsize=3)
        ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(list(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{names.get(metric, metric)} - {reference}, nats per datapoint")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_title("difference from the reference; thick bar: ± 2 paired s.e. (red: beyond it); thin: ± 2 s.e. "
                         "over seeds; dots: each seed", fontsize=8)
    fig.tight_layout()
    return fig


def readable_log_ticks(ax, axis: str, values: list[float]) -> None:
    """Ticks a log axis can be read by: 1, 2, 5 times powers of ten within the data's range (1, 1.5,
    2, 3, 5, 7 where that gives fewer than three; the range's own ends where that still does),
    written as plain numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    def within(mantissas):
        return [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2)
                for m in mantissas if lo / 1.5 <= m * 10.0 ** e <= hi * 1.5]

    ticks = within((1, 2, 5))
    if len(ticks) < 3:  # (a narrow range: finer steps, then its own ends)
        ticks = within((1, 1.5, 2, 3, 5, 7))
    if len(ticks) < 3:
        ticks = sorted({lo, hi, *ticks})
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    target.set_minor_formatter(NullFormatter())


def plot_snr_vs_k(snr: dict, path: Path) -> Path:
    """Encoder-gradient SNR against the number of samples K (IWAE vs DReG; for a discrete latent, the
    compared estimators, with their bias)."""
    fig = snr_figure(snr)
    _save(fig, path, dpi=100)
    _pyplot().close(fig)
    return path


def snr_figure(snr: dict):
    """The figure of :func:`plot_snr_vs_k`: log axes whose ticks read as plain numbers (the K measured
    on x; 1-2-5 steps on y); an estimator without noise (SNR infinite) is drawn at the top as
    "exact (∞)"; with ``encoder_relative_bias`` (a discrete latent), a second panel of the bias against K."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plt = _pyplot()
    panels = [("encoder_snr", "encoder gradient SNR, mean |E g| / std g")]
    if snr.get("encoder_relative_bias"):
        panels.append(("encoder_relative_bias", "encoder gradient |E g - exact| / |exact|"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        measured: set[int] = set()
        shown: list[float] = []
        exact = []
        for name, by_k in snr[key].items():
            ks = sorted(int(k) for k in by_k)
            if not ks:
                continue
            measured |= set(ks)
            values = [float(by_k[k]) for k in ks]
            if all(v == math.inf for v in values):
                exact.append((name, ks))
                continue
            shown += values
            ax.plot(ks, values, marker="o", label=name)
        top = max(shown, default=1.0) * 3
        for name, ks in exact:  # (no noise: |E g| / 0)
            ax.plot(ks, [top] * len(ks), marker="^", linestyle=":", label=f"{name}: exact (∞)")
            shown.append(top)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(measured)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        readable_log_ticks(ax, "y", shown)
        ax.set_xlabel("K (samples per datapoint)")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_title(f"inference-network gradient ({snr['parameters']})", fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_posteriors(program, x: torch.Tensor, grids: list, path: Path, titles: list[str], seed: int = 0) -> Path:
    """For each datapoint: the input, the true posterior p(z|x) (filled contours, from the grid) with
    q(z|x) overlaid (lines), and decoded images E[x|z] (draws x ~ p(x|z), seeded, where the
    likelihood has no closed-form mean) at q's mean, the posterior mode and two draws z ~ p(z|x).
    Contours sit where the density falls to exp(-r^2/2) of its peak, r = 1, 2, 3 (the 1-2-3
    standard-deviation ellipses of a Gaussian)."""
    import numpy as np

    program = as_program(program, tuple(x.shape[1:]))
    (name,) = program.latent_shapes
    plt = _pyplot()
    rows = len(grids)
    fig = plt.figure(figsize=(12, 3.1 * rows))
    spec = fig.add_gridspec(rows, 6, width_ratios=[1, 2.3, 1, 1, 1, 1], wspace=0.45, hspace=0.6)
    generator = torch.Generator().manual_seed(seed)
    levels = [math.exp(-0.5 * r * r) for r in (3, 2, 1)]
    for i, (g, title) in enumerate(zip(grids, titles)):
        z1, z2 = (a.cpu().numpy() for a in g.axes)
        post = g.log_posterior.exp().cpu()
        q = g.log_q.exp().cpu()
        flat = post.flatten()
        mode = torch.stack(torch.meshgrid(*g.axes, indexing="ij"), -1).reshape(-1, 2)[flat.argmax()]
        draws = torch.stack(torch.meshgrid(*g.axes, indexing="ij"), -1).reshape(-1, 2)[
            torch.multinomial(flat / flat.sum(), 2, generator=generator)]
        q_mean = program.posterior_means(x[i : i + 1])[name].reshape(2)
        ax = fig.add_subplot(spec[i, 0])
        _show(ax, x[i], "input x")
        ax = fig.add_subplot(spec[i, 1])
        ax.contourf(z1, z2, post.T.numpy(), levels=[post.max().item() * v for v in levels] + [post.max().item() * 1.01],
                    cmap="Blues", alpha=0.8)
        ax.contour(z1, z2, q.T.numpy(), levels=[q.max().item() * v for v in levels], colors="C3", linewidths=1)
        ax.plot(*mode.cpu().numpy(), "kx", label="mode of p(z|x)")
        ax.plot(*q_mean.cpu().numpy(), "+", color="C3", markersize=10, label="mean of q(z|x)")
        mass = (post > post.max() * 1e-3) | (q > q.max() * 1e-3)
        span = [np.asarray(a)[np.nonzero(mass.any(dim=d).numpy())[0]] for d, a in ((1, z1), (0, z2))]
        pad = [0.15 * (s.max() - s.min() + 1e-6) for s in span]
        ax.set_xlim(span[0].min() - pad[0], span[0].max() + pad[0])
        ax.set_ylim(span[1].min() - pad[1], span[1].max() + pad[1])
        ax.set_xlabel("z_1", fontsize=8)
        ax.set_ylabel("z_2", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"{title}\np(z|x) blue, q(z|x) red", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
        zs = torch.stack([q_mean, mode.to(q_mean.device), *draws.to(q_mean.device)])
        with seeded(seed + i, zs.device):
            images = program.decode({name: zs})
        for j, (img, label) in enumerate(zip(images, (f"{shown_pixels(program)}, z = mean of q", "z = mode of p(z|x)",
                                                      "z ~ p(z|x)", "z ~ p(z|x)"))):
            _show(fig.add_subplot(spec[i, 2 + j]), img, label)
    _save(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _show(ax, image: torch.Tensor, title: str) -> None:
    img = image.detach().float().clamp(0, 1).cpu()
    img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")
