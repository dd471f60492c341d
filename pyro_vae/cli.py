"""``pyro-vae``: train, evaluate, sample, encode, draw, compare, list and show configs from the command line.

    pyro-vae train [CONFIG.toml] [--set KEY=VALUE ...] [--out RUN_DIR] [--overwrite]
    pyro-vae train --data my_images.npz [--set data.test_fraction=0.2]   (your own arrays)
    pyro-vae train --resume RUN_DIR [--set train.epochs=N] [--trust-code]
    pyro-vae train CONFIG --nproc N                      (data-parallel; or torchrun -m pyro_vae train ...)
    pyro-vae evaluate RUN_DIR [--samples K] [--seed S] [--disentanglement] [--trust-code]
    pyro-vae explain RUN_DIR [--index I ...] [--samples K] [--trust-code]
    pyro-vae sample RUN_DIR [--n 64] [--seed S] [--trust-code]
    pyro-vae encode RUN_DIR [--data PATH] --out latents.npz|.csv [--samples K]
    pyro-vae interpolate RUN_DIR [--data PATH] [--pairs 0:1 2:3] [--steps 9]
    pyro-vae traverse RUN_DIR [--index I] [--dims 0 1 ...] [--span 3]
    pyro-vae compare [CONFIG.toml] --objectives elbo,iwae,dreg --budget 2000steps
    pyro-vae list [KIND]
    pyro-vae config [CONFIG.toml] [--set KEY=VALUE ...]

A run of your own model program (``model.program = "package.module:ClassName"``) imports that
module again only with ``--trust-code``: a run folder from elsewhere could name any module.

Errors meant for the user print one paragraph and exit with status 2 (a usage error: what was
asked cannot be done as asked) or 1 (a runtime failure: training diverged, a file could not be
read or written); ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
# Only light modules at the top (no torch, no pyro): --help and argparse's usage errors answer at
# once; each command imports what it runs.
from .config import (DATASETS, DEFAULT_TIMEOUT, REGISTRIES, Config, ProgramConfig, apply_overrides, library_program,
                     read_toml)
from .errors import ConfigError, ProgramError, PyroVAEError, RunDirError


LARGE_K = 100_000  # importance samples per datapoint beyond which `evaluate` asks to be told


def _config_from(path: str | None, overrides: list[str], data: str | None = None) -> Config:
    from .data import dataset_for_path

    raw = read_toml(path) if path else {}
    if data is not None:  # --data PATH: the dataset it names, whose options --set data.* may then change
        raw["data"] = _data_for(dataset_for_path(data), raw.get("data"))
    return Config.from_dict(apply_overrides(raw, overrides))


#: a dataset's options that name files of its own: not carried over to the file --data gives
_FILE_OPTIONS = ("path", "test_path", "vocabulary", "features", "format", "data_dir")


def _data_for(given: dict, configured) -> dict:
    """The [data] table of --data PATH: a config's own [data] of the same dataset kind keeps its other
    options (a column selection, the test fraction, a label column) and loses those naming its files;
    a config's [data] of another kind is replaced whole."""
    if isinstance(configured, dict) and configured.get("name") == given["name"]:
        kept = {k: v for k, v in configured.items() if k not in _FILE_OPTIONS}
        return {**kept, **given}
    return given


def _given_data(args: argparse.Namespace):
    """The splits of ``--data PATH`` for a command reading a run (checked against the run's fingerprint)."""
    if getattr(args, "data", None) is None:
        return None
    from .data import dataset_for_path

    return DATASETS.build(dataset_for_path(args.data), "--data").load()


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """``pyro-vae train --nproc N ...``: run the same command under torchrun, N processes on this
    machine (torchrun's --standalone rendezvous), and return its exit status."""
    import subprocess

    from .runs import default_run_dir

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}.")
    rest, skip = [], False
    for i, item in enumerate(argv):
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    if not args.resume and not args.out:  # every process must use the same default folder
        config = _config_from(args.config, args.set, args.data)
        rest += ["--out", str(default_run_dir(config))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "pyro_vae", *rest]
    return subprocess.call(command)


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import Distributed
    from .runs import CONFIG, default_run_dir
    from .trained import finish_run, load_run
    from .training import Trainer

    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        return launch(args, args.argv)
    # --seed and --device are their --set forms (given after every --set, so they win)
    args.set = [*args.set, *([f"seed={args.seed}"] if args.seed is not None else []),
                *([f"device={args.device}"] if args.device is not None else [])]

    config = _resumed_config(args) if args.resume else _config_from(args.config, args.set, args.data)
    dist = Distributed.from_environment(config.device, args.timeout)
    args.dist = dist
    say = print if dist.main and not args.quiet else (lambda *a, **k: None)
    if args.resume:
        run_dir = Path(args.resume)
    elif args.out:
        run_dir = Path(args.out)
    elif dist.active:
        raise ConfigError("under torchrun, give --out RUN_DIR: every process must write to the same run folder "
                          "(or launch with `pyro-vae train --nproc N`, which picks one for all).")
    else:
        run_dir = default_run_dir(config)

    args.run_dir_used = run_dir  # for the interrupt message
    if args.resume:
        require_trust(config, run_dir, args.trust_code)
    given = _given_data(args) if args.resume else None  # resuming a run trained on data from Python
    trainer = Trainer(config, run_dir, progress=not (args.no_progress or args.quiet), dist=dist, splits=given,
                      **({"log": say} if args.quiet else {}))
    if not args.resume:
        processes = f", {dist.world} processes ({dist.backend})" if dist.active else ""
        say(f"training into {run_dir}  (config: {run_dir / CONFIG}){processes}")
    trainer.fit(resume=bool(args.resume), overwrite=args.overwrite)
    run = load_run(run_dir, device=str(trainer.device), trust_code=True, splits=given)  # the code just trained
    args.on_interrupt = (f"the evaluation's finished batches are kept in {run_dir / 'evaluation.json.batches'}; "
                         f"`pyro-vae train --resume {run_dir}` finishes it")
    result = finish_run(run, log=say, dist=dist, progress=not (args.no_progress or args.quiet))
    say(result.table(f"test set of {config.data['name']}: {result.n} datapoints, {run.described}"))
    topics = _evaluation_topics(run_dir)
    if topics:
        say(f"topics: NPMI of the {topics['top_words']} top words {topics['npmi']:.3f} (over {topics['npmi_reference_corpus']}); "
            f"test perplexity {topics['perplexity']:.1f} per word ({topics['perplexity_from']}), the unigram floor "
            f"{topics['unigram_perplexity']:.1f}; each topic's top words: {run_dir / 'topics.txt'}")
    written = [name for name in ("metrics.jsonl", "checkpoint.pt", "best.pt", "evaluation.json", "topics.txt", "samples.png",
                                 "reconstructions.png", "curves.png", "latent.png", "analogies.png", "confusion.png") if (run_dir / name).is_file()]
    say(f"run folder: {run_dir}  ({', '.join(written)})")
    dist.close()
    return 0


def _evaluation_topics(run_dir: Path) -> dict | None:
    """A topic model's scores as its evaluation.json holds them (None for any other run)."""
    import json

    path = run_dir / "evaluation.json"
    return json.loads(path.read_text()).get("topics") if path.is_file() else None


def _resumed_config(args: argparse.Namespace) -> Config:
    """The config of ``train --resume RUN``: the run's own, with only the changes a resume may make."""
    from .runs import CHECKPOINT, CONFIG, RESUMABLE_CHANGES, differences_outside

    if args.config:
        raise ConfigError("give either a CONFIG file or --resume RUN_DIR, not both: a resumed run keeps its own config.")
    run_dir = Path(args.resume)
    if not (run_dir / CONFIG).is_file() or not (run_dir / CHECKPOINT).is_file():
        raise RunDirError(f"cannot resume {run_dir}: it needs {CONFIG} and {CHECKPOINT} (a run that finished at least one epoch).")
    saved = Config.load(run_dir / CONFIG)
    if args.data and saved.data["name"] != "given":
        raise ConfigError(f"--data: {run_dir} rebuilds its own data from its config (dataset "
                          f"'{saved.data['name']}'); resume it without --data.")
    config = Config.load(run_dir / CONFIG, args.set)
    changed = differences_outside(saved.to_dict(), config.to_dict(), RESUMABLE_CHANGES)
    if changed:
        keys = ", ".join(".".join(p) for p, _, _ in changed)
        allowed = ", ".join(".".join(p) for p in sorted(RESUMABLE_CHANGES))
        raise ConfigError(f"--resume can only change {allowed} (and respell data.data_dir as the same "
                          f"folder); these overrides would change the run: {keys}.")
    return config


def writing_into(run_dir: Path, out: Path, command: str):
    """The run folder's lock while ``out`` is written into it (nothing to hold for a file elsewhere)."""
    from contextlib import nullcontext

    from .runs import run_lock

    return run_lock(run_dir, command) if out.resolve().parent == Path(run_dir).resolve() else nullcontext()


def require_trust(config: Config, run_dir: Path, trusted: bool) -> None:
    """Refuse, before anything is loaded, a run folder naming user code without --trust-code."""
    if isinstance(config.model, ProgramConfig) and not trusted and not library_program(config.model.program):
        code = config.model.code or {}
        at = f" ({code['file']})" if code.get("file") else ""
        raise ProgramError(
            f"{run_dir} names user code, model.program = {config.model.program!r}{at}. Loading a run folder "
            f"imports code only when you ask: pass --trust-code if you trust that module (a run folder from "
            f"elsewhere could name any module).")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvaluationSettings, evaluate
    from .runs import resumable_evaluation, run_lock
    from .trained import load_run, write_evaluation

    run = load_run(args.run_dir, device=args.device, checkpoint=args.checkpoint, trust_code=args.trust_code,
                   splits=_given_data(args))
    cfg = run.config
    samples = cfg.eval.samples if args.samples is None else args.samples
    seed = cfg.seed if args.seed is None else args.seed
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}.")
    if samples > LARGE_K and not args.allow_large_k:
        n = run.prepared.test.shape[0]
        raise ConfigError(
            f"--samples {samples:,} is beyond {LARGE_K:,} importance samples per datapoint: {samples * n:,} decoder "
            f"passes over the {n:,} test datapoints (K = 5,000, the largest the papers report, already takes "
            f"an hour for a conv model on 2 CPU cores). Pass --allow-large-k to run it anyway.")
    exact_points = cfg.eval.exact_points if args.exact_points is None else args.exact_points
    stem = f"evaluation-K{samples}-seed{seed}"
    args.on_interrupt = (f"the finished batches are kept in {run.run_dir / (stem + '.batches')}; the same "
                         f"command resumes them")
    with run_lock(run.run_dir, "evaluate"), resumable_evaluation(run.run_dir, stem) as store:
        settings = EvaluationSettings.of(cfg, samples, seed=seed, exact_points=exact_points)
        result = evaluate(run.program, run.prepared.test, settings, store=store,  # (rerun after an interruption:
                          progress=not args.no_progress,                     # it resumes at the batches not done)
                          labels=run.program.policy.scored_labels(run.prepared.test_labels))
        extra = _disentanglement_report(run, args, seed) if args.disentanglement else {}
        path = write_evaluation(run, result, stem + ".json", extra=extra)
        result.write_csv(run.run_dir / f"{stem}.csv")
    if args.json:  # stdout holds the JSON alone
        import json

        print(json.dumps({**result.summary(), **extra}, indent=2))
        print(f"wrote {path} and {stem}.csv (per datapoint)", file=sys.stderr)
        return 0
    print(result.table(f"{run.run_dir} — test set of {cfg.data['name']}: {result.n} datapoints, {run.described}, seed {seed}"))
    if extra:
        print(_disentanglement_lines(extra["disentanglement"]))
    print(f"wrote {path} and {stem}.csv (per datapoint)")
    return 0


def _disentanglement_report(run, args, seed: int) -> dict:
    """``evaluate --disentanglement``: every disentanglement score of the run's test set against its
    factors, with standard errors, and the KL's decomposition over the same datapoints."""
    from .disentanglement import decomposition_or_reason, disentanglement_scores

    if args.points < 10 or args.resamples < 2:
        raise ConfigError(f"--points must be >= 10 and --resamples >= 2; got {args.points} and {args.resamples}.")
    scores = disentanglement_scores(run, points=args.points, resamples=args.resamples, seed=seed)
    scores["decomposition"] = decomposition_or_reason(run.program, run.prepared.test[:args.points], seed=seed,
                                                      batch_size=run.config.eval.batch_size)
    return {"disentanglement": scores}


def _disentanglement_lines(s: dict) -> str:
    def cell(key: str) -> str:
        return "-" if s.get(key) is None else f"{s[key]:.3f} ± {s[key + '_stderr']:.3f}"

    lines = [f"disentanglement ({s['inputs']}; ± bootstrap standard error over {s['resamples']} resamples):",
             f"  MIG {cell('mig')}   SAP {cell('sap')}   FactorVAE score {cell('factorvae')}",
             f"  DCI disentanglement {cell('dci_disentanglement')}   completeness {cell('dci_completeness')}   "
             f"informativeness {cell('dci_informativeness')}"]
    d = s.get("decomposition")
    if isinstance(d, dict) and "kl" in d:
        lines.append(f"  KL {d['kl']:.2f} = index-code MI {d['mutual_information']:.2f} + total correlation "
                     f"{d['total_correlation']:.2f} + dimension-wise KL {d['dimension_wise_kl']:.2f} [nats/datapoint]")
    return "\n".join(lines)


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from .exact import decomposition, format_decomposition
    from .plots import plot_posteriors
    from .trained import load_run

    run = load_run(args.run_dir, device=args.device, trust_code=args.trust_code, splits=_given_data(args))
    cfg, test = run.config, run.prepared.test
    n = test.shape[0]
    indices = args.index or torch.linspace(0, n - 1, 4).long().tolist()
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--index {bad[0]} is out of range: the test set has {n} datapoints (0 to {n - 1}).")
    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}.")
    seed = cfg.seed if args.seed is None else args.seed
    run.model.eval()
    x = test[torch.tensor(indices, device=test.device)]
    labels, program = run.prepared.test_labels, run.program
    chosen = labels[torch.tensor(indices, device=labels.device)] if labels is not None else None
    program = program.policy.scoring_view(program, program.policy.encode_labels(program, chosen, "this test set"))
    rows, exact = decomposition(program, x, samples=args.samples, seed=seed, chunk_pairs=cfg.eval.chunk_pairs)
    titles = [f"test datapoint {i}" + (f" (label {labels[i].item()})" if labels is not None else "") for i in indices]
    print(f"{run.run_dir}: " + ("log p(x|y) = ELBO(x|y) + KL(q(z|x, y) || p(z|x, y)),  ELBO(x|y) = E_q[log p(x|z, y)] "
                                "- KL(q(z|x, y) || p(z|y))" if program.labels is not None else
                                "log p(x) = ELBO + KL(q(z|x) || p(z|x)),  ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))")
          + f"; nats, seed {seed}")
    for row, title in zip(rows, titles):
        print()
        print(format_decomposition(row, title))
    if exact is not None and exact.grids:
        out = _given_out(args, "picture") or run.run_dir / "posterior.png"
        with writing_into(run.run_dir, out, "explain"):
            plot_posteriors(program, x, exact.grids, out, titles, seed=seed)
        print(f"\nwrote {out}: p(z|x) (exact, by quadrature) against q(z|x), and decoded images")
    else:
        shapes = ", ".join(f"{name} {tuple(shape)}" for name, shape in run.program.latent_shapes.items())
        print(f"\n(no posterior picture: p(z|x) is drawn, by quadrature, only for one 2-D latent site, and this run's "
              f"latents are {shapes}; the terms above are estimated instead, KL(q(z|x) || p(z|x)) as log p(x) - ELBO "
              f"with K = {args.samples})")
    return 0


def _classes(text: str | None, program) -> list[int] | None:
    """``--classes``: "all", or classes "0,3,7"; None when not given (refused for a conditional program)."""
    if text is None or not program.policy.takes_labels:
        return program.policy.drawing_labels(program, None if text is None else [])  # (refused where wrong)
    if text == "all":
        return list(range(program.num_classes))
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--classes {text!r}: give \"all\" or integers separated by commas, e.g. 0,3,7.") from None
    bad = [c for c in classes if not 0 <= c < program.num_classes]
    if bad or not classes:
        raise ConfigError(f"--classes {text!r}: {program.name}'s classes are 0..{program.num_classes - 1}.")
    return classes


def cmd_sample(args: argparse.Namespace) -> int:
    from .plots import prior_samples, save_grid
    from .trained import load_run

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}.")
    given = _given_out(args, "picture")
    run = load_run(args.run_dir, device=args.device, with_data=False, trust_code=args.trust_code)
    seed = run.config.seed if args.seed is None else args.seed
    if args.pixels is None:
        args.pixels = "mean" if run.program.mean_available else "sample"
    out = given or run.run_dir / f"samples-n{args.n}-seed{seed}-{args.pixels}.png"
    if args.pixels == "mean" and not run.program.mean_available:
        what = f"the {run.program.vae.likelihood.name} likelihood" if run.program.vae is not None else \
            f"the observed site \"x\" of {run.program.name}"
        raise ConfigError(
            f"{what} has no closed-form mean E[x|z] (e.g. each pixel depends on those drawn before "
            f"it); pass --pixels sample to draw x ~ p(x|z)."
        )
    classes = _classes(args.classes, run.program)
    what = "E[x|z]" if args.pixels == "mean" else "x ~ p(x|z)"
    if classes is not None:  # n images of each class, one row per class
        import torch

        labels = torch.tensor(classes).repeat_interleave(args.n)
        images = prior_samples(run.program.labelled(labels), len(labels), seed, args.pixels)
        nrow, title = args.n, f"{args.n} samples per class (rows: y = {', '.join(map(str, classes))}): {what}, z ~ p(z)"
    else:
        images = prior_samples(run.program, args.n, seed, args.pixels)
        nrow, title = int(max(1, round(args.n**0.5))), f"{args.n} samples: {what}, z ~ p(z)"
    with writing_into(run.run_dir, out, "sample"):
        save_grid(images, out, nrow, f"{title} (seed {seed})", run.config.data.get("view"))
    print(f"wrote {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .data import read_datapoints
    from .files import atomic_write
    from .trained import load_run

    out = _given_out(args, "table")
    run = load_run(args.run_dir, device=args.device, with_data=args.data is None, trust_code=args.trust_code)
    if args.data is not None:
        x, labels = read_datapoints(args.data, run.program.data_shape, None, run.config.data,  # (Run scales it)
                                    features=(run.checkpoint.get("data") or {}).get("feature_names"))
        what = args.data
    else:
        x, labels = run.data.test, run.data.test_labels
        what = f"the test set of {run.config.data['name']}"
    table = run.encode_table(x, labels, samples=args.samples, seed=args.seed, progress=not args.no_progress, what=what)
    with writing_into(run.run_dir, out, "encode"):
        atomic_write(out, table.write_npz if out.suffix.lower() == ".npz" else table.write_csv)
    print(f"wrote {out}: {table.description}")
    return 0


def _picture_inputs(args: argparse.Namespace, run) -> tuple:
    """The datapoints a picture command reads: every one of --data PATH, or the run's test set."""
    from .data import read_datapoints

    shape = tuple(run.program.data_shape)
    if args.data is not None:
        x, _ = read_datapoints(args.data, shape)
        return x, args.data
    return run.data.test, "the test set"


def _given_out(args: argparse.Namespace, kind: str) -> Path | None:
    """``--out`` checked for what the command writes (``runs.check_output_file``), None where not given."""
    from .runs import check_output_file

    return check_output_file(Path(args.out), kind, args.overwrite) if args.out else None


def _picture_out(args: argparse.Namespace, run, default: str) -> Path:
    from .runs import check_output_file

    return _given_out(args, "picture") or check_output_file(run.run_dir / default, "picture", args.overwrite)


def cmd_interpolate(args: argparse.Namespace) -> int:
    import torch

    from .plots import save_grid
    from .trained import load_run

    if args.steps < 2:
        raise ConfigError(f"--steps must be >= 2, got {args.steps}.")
    run = load_run(args.run_dir, device=args.device, with_data=args.data is None, trust_code=args.trust_code)
    x, what = _picture_inputs(args, run)
    pairs = []
    for text in args.pairs or ["0:1"]:
        try:
            a, b = (int(v) for v in text.split(":"))
        except ValueError:
            raise ConfigError(f"--pairs takes I:J (two datapoint indices), got {text!r}.") from None
        for i in (a, b):
            if not 0 <= i < len(x):
                raise ConfigError(f"--pairs {text}: {what} has {len(x)} datapoints (0 to {len(x) - 1}).")
        pairs.append((a, b))
    if run.program.discrete_sites:
        raise ConfigError(
            f"interpolate draws the straight line between two posterior means, and {run.program.name}'s latent site(s) "
            f"{', '.join(run.program.discrete_sites)} are discrete (one-hot groups or binary units): the points between "
            f"two codes are no code at all. Use `pyro-vae traverse` (it switches one group's class at a time).")
    out = _picture_out(args, run, f"interpolate-{'-'.join(f'{a}_{b}' for a, b in pairs)}.png")
    shapes = run.program.latent_shapes
    t = torch.linspace(0, 1, args.steps, device=run.device)
    rows = []
    for a, b in pairs:
        if len(shapes) == 1:
            means, _ = run.encode(x[[a, b]])
            means = {run._site(): means}
        else:  # every latent site at once, each along its own line (E_q of each given the means before it)
            means = run.program.posterior_means(run.inputs(x[[a, b]]))
        path = {site: (1 - t.view(-1, *[1] * (m.dim() - 1))) * m[0] + t.view(-1, *[1] * (m.dim() - 1)) * m[1]
                for site, m in means.items()}  # the straight line between the two posterior means
        rows += [run.inputs(x[a : a + 1]), run.decode(path), run.inputs(x[b : b + 1])]
    with writing_into(run.run_dir, out, "interpolate"):
        save_grid(torch.cat(rows), out, args.steps + 2, view=run.config.data.get("view"), title=
                  f"{len(pairs)} pair(s) of {what}: the inputs at the ends, E[x|z] along z = (1 - t) E_q[z|x_a] + "
                  f"t E_q[z|x_b], {args.steps} steps")
    print(f"wrote {out}")
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    import torch

    from .plots import save_grid
    from .trained import load_run

    if args.steps < 2 or args.span <= 0:
        raise ConfigError(f"--steps must be >= 2 and --span > 0, got {args.steps} and {args.span}.")
    run = load_run(args.run_dir, device=args.device, with_data=args.data is None, trust_code=args.trust_code)
    x, what = _picture_inputs(args, run)
    if not 0 <= args.index < len(x):
        raise ConfigError(f"--index {args.index}: {what} has {len(x)} datapoints (0 to {len(x) - 1}).")
    site = run._site(args.site)
    latent = run.program.latent_shapes[site]
    if len(latent) != 1:
        raise ConfigError(f"traverse sweeps the coordinates of a latent vector; site {site!r} has shape {latent}.")
    size = run.config.eval.batch_size
    if len(run.program.latent_shapes) == 1:
        means = torch.cat([run.encode(x[b : b + size])[0] for b in range(0, len(x), size)])
        held = {}
    else:  # the other sites held at the datapoint's posterior means
        parts = [run.program.posterior_means(run.inputs(x[b : b + size])) for b in range(0, len(x), size)]
        every = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        means, held = every[site], {name: m[args.index] for name, m in every.items() if name != site}
    if site in run.program.discrete_sites:  # one-hot groups or binary units: switch codes, never sweep them
        return _traverse_codes(args, run, site, means[args.index], held, what)
    spread = means.std(0)  # how far each coordinate's posterior mean moves over the datapoints
    dims = args.dims if args.dims else spread.argsort(descending=True)[: min(8, latent[0])].tolist()
    for d in dims:
        if not 0 <= d < latent[0]:
            raise ConfigError(f"--dims {d}: the latent has coordinates 0 to {latent[0] - 1}.")
    out = _picture_out(args, run, f"traverse-{args.index}.png")
    offsets = torch.linspace(-args.span, args.span, args.steps, device=run.device)
    rows = []
    for d in dims:
        z = means[args.index].repeat(args.steps, 1)
        z[:, d] = z[:, d] + offsets * spread[d].clamp_min(1e-3)
        rows.append(run.decode({site: z, **{n: m.expand(args.steps, *m.shape) for n, m in held.items()}}
                               if held else z))
    with writing_into(run.run_dir, out, "traverse"):
        save_grid(torch.cat(rows), out, args.steps, view=run.config.data.get("view"), title=
                  f"datapoint {args.index} of {what}: rows sweep z_d over E_q[z_d|x] +- {args.span:g} sd of the "
                  f"posterior means (d = {', '.join(map(str, dims))})")
    print(f"wrote {out}: latent coordinates {', '.join(map(str, dims))}")
    return 0


def _traverse_codes(args: argparse.Namespace, run, site: str, mean, held: dict, what: str) -> int:
    """``traverse`` of a discrete latent, where sweeping a coordinate means nothing: the datapoint's
    most probable code, then one row per group (one-hot groups of K classes: the group switched to
    each class in turn) or per unit (binary units: the unit off, then on), the rest of the code held."""
    import torch

    from .plots import save_grid

    groups = run.program.code_groups.get(site)
    code = mean.clone()
    if groups is not None:
        m, k = groups
        code = torch.nn.functional.one_hot(code.view(m, k).argmax(-1), k).flatten().float()
        rows_of = [[(g, c) for c in range(k)] for g in range(m)][:8]
    else:
        code = (code > 0.5).float()
        rows_of = [[(u, 0), (u, 1)] for u in range(code.numel())][:16]
    points = []
    for row in rows_of:
        for unit, value in row:
            z = code.clone()
            if groups is not None:
                z.view(groups)[unit] = torch.nn.functional.one_hot(torch.tensor(value), groups[1]).float()
            else:
                z[unit] = float(value)
            points.append(z)
    z = torch.stack(points).to(run.device)
    out = _picture_out(args, run, f"traverse-{args.index}.png")
    shown = run.decode({site: z, **{n: m.expand(len(z), *m.shape) for n, m in held.items()}} if held else z)
    how = (f"row g: group g of the code switched to class 0..{groups[1] - 1}" if groups is not None else
           "row u: unit u of the code off, then on")
    with writing_into(run.run_dir, out, "traverse"):
        save_grid(shown, out, len(rows_of[0]), view=run.config.data.get("view"), title=f"datapoint {args.index} of {what}, its most probable code "
                  f"(a discrete latent: codes are switched, not swept); {how}, the rest held")
    print(f"wrote {out}: {len(rows_of)} {'groups' if groups is not None else 'units'} of site {site!r} switched")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import Budget, Comparison, crossed, parse_objectives, parse_total, parse_variants, time_line, title

    config = _config_from(args.config, args.set, args.data)
    specs = parse_objectives(args.objectives, args.particles)
    variants = parse_variants(args.variants, config)
    budget = Budget.parse(args.budget)
    total = parse_total(args.total) if args.total else None
    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    args.run_dir_used = None
    ks = tuple(int(k) for k in args.snr_k.split(",") if k.strip()) if args.snr_k else None
    comparison = Comparison(config, specs, budget, out, particles=args.particles, curve_points=args.curve_points,
                            curve_samples=args.curve_samples, grad_draws=args.grad_draws,
                            grad_batch=args.grad_batch, snr_ks=ks, final_samples=args.final_samples,
                            seeds=args.seeds, reference=args.reference, total=total, confirmed=args.yes,
                            variants=variants, progress=not args.no_progress)
    seeds = f"{args.seeds} seeds from {config.seed}" if args.seeds > 1 else f"seed {config.seed}"
    print(f"comparing {', '.join(title(s) for s in crossed(specs, variants))} on {config.data['name']}: {budget.describe()} each, "
          f"{seeds} -> {out}")
    comparison.run(overwrite=args.overwrite)
    m = comparison.measuring
    print(f"\nnats per datapoint, test set of {config.data['name']}; {budget.describe()} per objective"
          + (f"; {comparison.scaled_note}" if comparison.scaled_note else "") + "\n")
    print(comparison.markdown())
    print(f"\ndifferences from {comparison.ref} (paired: the same test datapoints):\n")
    print(comparison.paired_markdown())
    print(f"\ngradient statistics ({m.grad_draws} draws on a fixed batch of {m.grad_batch}):\n")
    print(comparison.gradient_markdown())
    snr = comparison.snr_vs_k["encoder_snr"]
    print("\nencoder gradient SNR against K (" + comparison.snr_vs_k["parameters"] + "): " + "; ".join(
        f"{name} " + ", ".join(f"K={k}: {v:.3f}" for k, v in by_k.items()) for name, by_k in snr.items()))
    print(f"\n{time_line(comparison)}")
    price = (out / "price.png").exists()
    print(f"\nwrote {out}/results.md, results.csv, results.json, curves.png, differences.png, snr_vs_k.png"
          f"{', price.png (log p(x) against MIG)' if price else ''} and one run folder per objective"
          f"{' and variant' if variants else ''}{' and seed' if args.seeds > 1 else ''} (each with per_datapoint.csv"
          f"{' and traversals.png' if price else ''})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else [*REGISTRIES, "program"]
    for kind in kinds:
        if kind in ("program", "programs"):
            print(describe_programs())
        elif kind not in REGISTRIES:
            raise ConfigError(f"unknown kind '{kind}'; valid kinds: {', '.join([*REGISTRIES, 'program'])}.")
        else:
            print(REGISTRIES[kind].describe())
        print()
    return 0


def describe_programs() -> str:
    """The library's model programs (``model.program = NAME``), each with its options and defaults,
    as `pyro-vae list` prints every registry."""
    import inspect

    from .config import LIBRARY_PROGRAMS
    from .programs import import_program_class, signature_defaults

    lines = ["model programs (model.program = NAME; \"vae\", the stock VAE, is the default; your own: "
             "\"package.module:ClassName\"):"]
    for name, path in LIBRARY_PROGRAMS.items():
        cls = import_program_class(path)
        summary = (inspect.getdoc(cls) or "").strip().splitlines()[0]
        lines.append(f"  {name}  ({path})  {summary}")
        for option, default in signature_defaults(cls).items():
            lines.append(f"      {option} = {default!r}")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from .trained import export_run

    out = export_run(args.run_dir, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(f"wrote {out}: model.safetensors (the parameters), config.toml, export.json; "
          f"load it with pyro_vae.load({str(out)!r})")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import json

    from .data.stream import convert

    if args.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows must be >= 1, got {args.chunk_rows}.")
    out = convert(args.source, args.out, chunk_rows=args.chunk_rows, overwrite=args.overwrite,
                  progress=not args.no_progress, layer=args.layer)
    manifest = json.loads((out / "manifest.json").read_text())
    shape, files = manifest["shape"], manifest["files"]
    size = sum(v[0] for v in files.values())
    print(f"wrote {out}: {manifest['kind']} {shape[0]:,} x {' x '.join(map(str, shape[1:]))}, {size / 2**20:,.2f} MiB in "
          f"{len(files)} files, chunks of {manifest['chunk_rows']} rows; train on it with --set data.name=stream "
          f"--set data.path={out} (or pyro-vae train --data {out})")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(_config_from(args.config, args.set).to_toml(), end="")
    return 0


def _command(sub, name: str, examples: list[str], help: str) -> argparse.ArgumentParser:
    """A subcommand whose own --help opens with its one-line description and ends with examples."""
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", allow_abbrev=False,
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)

def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.prior=mixture --set model.prior.components=10 "
                   "(values use TOML syntax: 10, 1e-3, true, [400, 200], or a bare word)")

def _data(p: argparse.ArgumentParser, training: bool = False) -> None:
    p.add_argument("--data", metavar="PATH", help=(
        "train on your own data: a folder of images (dataset 'image-folder'), a .npy, .npz or .pt file "
        "(dataset 'array'), a .csv/.tsv table (dataset 'csv'), counts (dataset 'counts') or a streaming layout (pyro-vae convert; dataset 'stream'); --set data.* sets its options; a config's [data] of the same "
        "kind keeps its options but those naming files (e.g. its gene selection); summarized in one line when "
        "training starts" if training else
        "the data the run trained on, where its config cannot rebuild it (a run trained on data from Python): "
        "a folder of images, a .npy, .npz or .pt file or a .csv/.tsv table, checked against the run's fingerprint"))

def _trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true",
                   help="import the user model program a run folder names (model.program); without it such "
                   "a run is refused, since a run folder from elsewhere could name any module")

def _picture(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", metavar="PATH", help="a folder of images or a .npy, .npz or .pt file to take the "
                   "datapoints from (default: the run's test set)")
    p.add_argument("--steps", type=int, default=9, help="pictures per row (default 9)")
    p.add_argument("--out", help=f"picture path (default: RUN_DIR/{name}-....png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help="cpu, cuda or auto (default: the run's device)")
    _trust(p)

def _parser_train(sub) -> None:
    p = _command(sub, "train", ['pyro-vae train', 'pyro-vae train --set model.prior=mixture --set train.epochs=50 --out runs/mix', 'pyro-vae train --data my_images/ --set model.likelihood=bernoulli', 'pyro-vae train --resume runs/mix --set train.epochs=100'], help="train a VAE (or your own model program) by SVI and write a run folder")
    p.add_argument("config", nargs="?", help="a TOML config (default: built-in defaults, MNIST subset)")
    _overrides(p)
    p.add_argument("--out", help="run folder to create (default: runs/<time>-<data>-<prior>-<likelihood>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.add_argument("--seed", type=int, help="the run's seed (the same as --set seed=N)")
    p.add_argument("--device", help="cpu, cuda or auto (the same as --set device=...)")
    p.add_argument("--nproc", type=int, help="train data-parallel in N processes on this machine (runs torchrun; "
                   "for several machines run torchrun yourself: see the README)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds a collective may wait for the other processes before failing (default %(default)g)")
    _data(p, training=True)
    _trust(p)
    p.set_defaults(func=cmd_train)


def _parser_evaluate(sub) -> None:
    p = _command(sub, "evaluate", ['pyro-vae evaluate runs/mix --samples 5000', 'pyro-vae evaluate runs/mix --json > summary.json'], help="ELBO, its terms, importance-sampled log p(x), gap, active units, bits/dim")
    p.add_argument("run_dir")
    p.add_argument("--samples", "-k", type=int, help="importance samples K per datapoint (default: eval.samples, 1000)")
    p.add_argument("--seed", type=int, help="seed of the estimates (default: the run's seed)")
    p.add_argument("--exact-points", type=int, help="test datapoints given exact values by 2-D quadrature "
                   "(default: eval.exact_points, 100; linear-Gaussian models get closed forms on all; 0: none)")
    p.add_argument("--checkpoint", default="auto", help="best (best validation ELBO), last, or a snapshot's "
                   ".pt path (default auto: best when the run kept a validation split, else last)")
    p.add_argument("--device", help="cpu, cuda or auto (default: the run's device)")
    p.add_argument("--allow-large-k", action="store_true", help=f"allow --samples beyond {LARGE_K:,}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (and nothing else there)")
    p.add_argument("--disentanglement", action="store_true", help="also MIG, DCI, SAP and the FactorVAE score "
                   "against the data's factors (with bootstrap standard errors) and the KL's decomposition")
    p.add_argument("--points", type=int, default=2000, help="test datapoints the disentanglement scores use "
                   "(default 2000)")
    p.add_argument("--resamples", type=int, default=10, help="bootstrap resamples of the scores' standard errors "
                   "(default 10)")
    _data(p)
    _trust(p)
    p.set_defaults(func=cmd_evaluate)


def _parser_explain(sub) -> None:
    p = _command(sub, "explain", ['pyro-vae explain runs/two-d --index 3 --index 7'], help="log p(x) = ELBO + KL(q || p(z|x)) term by term for chosen test points; "
                       "a picture of q(z|x) against p(z|x) for 2-D latents")
    p.add_argument("run_dir")
    p.add_argument("--index", "-i", type=int, action="append", help="a test datapoint (repeatable; default: 4 spread "
                   "over the test set)")
    p.add_argument("--samples", "-k", type=int, default=5000, help="samples for the estimated terms (default 5000)")
    p.add_argument("--seed", type=int, help="seed of the estimates (default: the run's seed)")
    p.add_argument("--out", help="posterior picture path (default: RUN_DIR/posterior.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help="cpu, cuda or auto (default: the run's device)")
    _data(p)
    _trust(p)
    p.set_defaults(func=cmd_explain)


def _parser_encode(sub) -> None:
    p = _command(sub, "encode", ['pyro-vae encode runs/mix --data new_images.npy --out latents.npz --samples 1000'], help="per datapoint: q(z|x)'s mean and scale, the ELBO and importance-sampled "
                       "log p(x) (an anomaly score), into a .npz or .csv file")
    p.add_argument("run_dir")
    p.add_argument("--data", metavar="PATH", help="a folder of images or a .npy, .npz or .pt file of datapoints "
                   "to encode, every one (default: the run's test set)")
    p.add_argument("--out", required=True, help="the .npz or .csv file to write")
    p.add_argument("--samples", "-k", type=int, help="importance samples K per datapoint (default: eval.samples)")
    p.add_argument("--seed", type=int, help="seed of the estimates (default: the run's seed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help="cpu, cuda or auto (default: the run's device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _trust(p)
    p.set_defaults(func=cmd_encode)


def _parser_interpolate(sub) -> None:
    p = _command(sub, "interpolate", ['pyro-vae interpolate runs/mix --pairs 0:1 2:3 --steps 9'], help="decode the straight line between two datapoints' posterior means")
    _picture(p, "interpolate")
    p.add_argument("--pairs", nargs="+", metavar="I:J", help="pairs of datapoint indices (default 0:1), a row each")
    p.set_defaults(func=cmd_interpolate)


def _parser_traverse(sub) -> None:
    p = _command(sub, "traverse", ['pyro-vae traverse runs/mix --index 0 --span 3'], help="sweep one latent coordinate at a time around a datapoint's posterior mean")
    _picture(p, "traverse")
    p.add_argument("--index", "-i", type=int, default=0, help="the datapoint (default 0)")
    p.add_argument("--dims", type=int, nargs="+", help="latent coordinates, a row each (default: the 8 whose "
                   "posterior means spread most over the datapoints)")
    p.add_argument("--span", type=float, default=3.0, help="sweep +- this many standard deviations of the "
                   "coordinate's posterior means (default 3)")
    p.add_argument("--site", help="the latent site to sweep, for a program of several (the others stay at the "
                   "datapoint's posterior means)")
    p.set_defaults(func=cmd_traverse)


def _parser_sample(sub) -> None:
    p = _command(sub, "sample", ['pyro-vae sample runs/mix --n 64 --seed 1', 'pyro-vae sample runs/cvae --classes all --n 8'],
                help="decode samples z ~ p(z) into a picture")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64; per class with --classes)")
    p.add_argument("--classes", help="a program that takes labels: draw x ~ p(x|z, y) for these classes, a row of "
                   "--n each: \"all\" or e.g. 0,3,7 (required by a conditional program)")
    p.add_argument("--seed", type=int, help="seed (default: the run's seed)")
    p.add_argument("--pixels", choices=["mean", "sample"],
                   help="show E[x|z] or a draw x ~ p(x|z) (default: E[x|z] where the likelihood has it in "
                        "closed form, else a draw)")
    p.add_argument("--out", help="picture path (default: RUN_DIR/samples-n<N>-seed<S>-<pixels>.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", help="cpu, cuda or auto (default: the run's device)")
    _trust(p)
    p.set_defaults(func=cmd_sample)


def _parser_compare(sub) -> None:
    p = _command(sub, "compare", ['pyro-vae compare --objectives elbo,iwae,dreg --particles 5 --budget 2000steps', 'pyro-vae compare --objectives elbo,elbo-analytic-kl,iwae,stl,dreg --particles 5 --budget 200steps --seeds 3 --total 15min', "pyro-vae compare --set model.latent_dim=16 --set model.prior=categorical --set model.guide=categorical --objectives 'enumerate,score-function(baseline=leave-one-out):4,gumbel-softmax'", "pyro-vae compare --objectives elbo-analytic-kl --variants 'normal: model.prior=standard-normal | vamp: model.prior=vamp | flow: model.prior=flow' --budget 500steps"], help="train one model under several objectives (and model variants) on equal budgets and compare "
                  "them: paired differences from a reference, spread over seeds; the whole run's time announced before "
                  "it starts")
    p.add_argument("config", nargs="?", help="a TOML config (default: built-in defaults)")
    _overrides(p)
    _data(p, training=True)
    p.add_argument("--objectives", default="elbo,elbo-analytic-kl,iwae,stl,dreg",
                   help="comma-separated objectives, each NAME, NAME:K (K samples per datapoint) or "
                   "NAME(key=value; ...):K with options, e.g. 'score-function(baseline=none):4' "
                   "(default: %(default)s)")
    p.add_argument("--particles", "-k", type=int, default=10,
                   help="samples per datapoint for every objective without its own :K, and the K of the "
                   "test IWAE bound (default 10)")
    p.add_argument("--budget", default="1000steps", help="training per objective and seed: steps (2000, "
                   "2000steps) or training time (90s, 5min); default %(default)s")
    p.add_argument("--seeds", type=int, default=1, help="initializations per objective (seed, seed+1, ...; the "
                   "data order and noise stay those of the config's seed); default 1")
    p.add_argument("--variants", help="model variants, each objective trained under each: 'NAME: KEY=VALUE; ... | "
                   "NAME: ...' (overrides of model.* and train.* as --set takes them), e.g. 'normal: "
                   "model.prior=standard-normal | vamp: model.prior=vamp' (default: the config as it is)")
    p.add_argument("--reference", help="the objective (or variant, or 'variant / objective') the differences are "
                   "taken from (default: the first)")
    p.add_argument("--total", help="the whole run's time, training and measuring (e.g. 15min): the measuring "
                   "not set below is scaled down to fit; a run whose estimate still exceeds it is refused "
                   "without --yes (default: measuring scaled to at most 50%% on top of the training)")
    p.add_argument("--yes", action="store_true", help="run even where the estimate exceeds --total")
    p.add_argument("--curve-points", type=int, help="evaluations along training (default 10, scaled to fit)")
    p.add_argument("--curve-samples", type=int, help="K of log p(x) along training (default 100, scaled to fit)")
    p.add_argument("--grad-draws", type=int, help="gradient draws per snapshot (default 100, scaled to fit)")
    p.add_argument("--grad-batch", type=int, help="minibatch of the gradient statistics (default 64)")
    p.add_argument("--snr-k", help="K values of the SNR-against-K plot (default 1,4,16,64, the largest dropped "
                   "to fit)")
    p.add_argument("--final-samples", type=int, help="K of the final test log p(x) (default eval.samples, "
                   "scaled to fit)")
    p.add_argument("--out", help="folder to create (default: runs/compare-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing comparison folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)


def _parser_list(sub) -> None:
    p = _command(sub, "list", ['pyro-vae list', 'pyro-vae list prior'], help="every registered component with its options and defaults")
    p.add_argument("kind", nargs="?", help=f"only one kind: {', '.join(REGISTRIES)}, program")
    p.set_defaults(func=cmd_list)


def _parser_export(sub) -> None:
    p = _command(sub, "export", ["pyro-vae export runs/mix --out exported/mix", "python -c \"import pyro_vae; "
                "print(pyro_vae.load('exported/mix').sample(4).shape)\""],
                help="write a trained model to share: its parameters as safetensors (loading runs no code), "
                "the config and what it trained on")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the export folder to create")
    p.add_argument("--checkpoint", default="auto", help="auto (best.pt if the run has one, else checkpoint.pt), "
                   "best, last, or a snapshot's path")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=cmd_export)


def _parser_convert(sub) -> None:
    p = _command(sub, "convert", ["pyro-vae convert cells.h5ad --out cells.stream --layer counts",
                                  "pyro-vae convert x.npy --out x.stream --chunk-rows 8192"],
                 help="write data into the streaming layout (plain .npy files read through memory maps: dataset "
                      "'stream'), for data larger than you want to hold in memory; reads a .npy or .npz array, a "
                      "SciPy sparse .npz, a 10x folder, an .h5ad file or LIBSVM text")
    p.add_argument("source", help="the data to convert")
    p.add_argument("--out", required=True, help="the folder to write (a new one, or an earlier layout with --overwrite)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows per chunk: the unit of the shuffled epoch "
                   "order and of the held-out test split (default %(default)s)")
    p.add_argument("--layer", help=".h5ad: convert layers/LAYER (e.g. counts) instead of X")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier streaming layout in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_convert)


def _parser_completion(sub) -> None:
    p = _command(sub, "completion", ['pyro-vae completion bash > ~/.local/share/bash-completion/completions/pyro-vae',
                               'pyro-vae completion zsh > ~/.zfunc/_pyro-vae   # with fpath+=(~/.zfunc) in ~/.zshrc'],
                help="print a shell completion script for pyro-vae (bash, zsh or tcsh; made by shtab from this "
                "command line's own parser)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=cmd_completion)


def _parser_config(sub) -> None:
    p = _command(sub, "config", ['pyro-vae config examples/configs/mixture-prior.toml --set train.epochs=5'], help="print the resolved config (defaults filled in) as TOML")
    p.add_argument("config", nargs="?")
    _overrides(p)
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae", allow_abbrev=False,  # an option spelt short (--sample for --samples) is refused, not guessed
        description="Variational autoencoders in Pyro: declared priors, likelihoods and ELBO estimators. "
        "All numbers are nats per datapoint (summed over pixels).",
    )
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_parser_train, _parser_evaluate, _parser_explain, _parser_encode, _parser_interpolate, _parser_traverse, _parser_sample, _parser_compare, _parser_list, _parser_export, _parser_convert, _parser_completion, _parser_config):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`pyro-vae list | head`): nothing left to say, and no one to say it to
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (so that Python's own flush at exit does not fail again)
        return 0
    except (PyroVAEError, OSError) as e:
        if args.debug:
            import traceback

            traceback.print_exc()
        dist = getattr(args, "dist", None)
        where = f" (rank {dist.rank} of {dist.world})" if dist is not None and dist.active else ""
        if isinstance(e, OSError):  # the operating system refused: a runtime failure, said in one line
            path = f"{e.filename}: " if e.filename else ""
            print(f"error{where}: {path}{e.strerror or e}.", file=sys.stderr)
            return 1
        print(f"error{where}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        said = getattr(args, "on_interrupt", None)
        run = getattr(args, "run_dir_used", None)
        if said:
            print(f"\ninterrupted: {said}.", file=sys.stderr)
        elif run:
            print(f"\ninterrupted: the last finished epoch's checkpoint is kept. Resume with "
                  f"`pyro-vae train --resume {run}`.", file=sys.stderr)
        else:
            print("\ninterrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
