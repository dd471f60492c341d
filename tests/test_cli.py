"""The command line: train, evaluate, sample, resume, list, and every refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import REGISTRIES, Config
from pyro_vae.runs import CHECKPOINT, load_checkpoint, read_metrics

TINY = [
    "--set", "data=synthetic", "--set", "data.n_train=96", "--set", "data.n_test=40", "--set", "data.side=6",
    "--set", "model.latent_dim=2", "--set", "model.network.hidden=[16]",
    "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.lr=1e-2",
    "--set", "eval.samples=16",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(run_dir), "--no-progress"]) == 0
    return run_dir


def test_train_writes_a_complete_run_folder(trained, capsys):
    for name in ("config.toml", "metrics.jsonl", "checkpoint.pt", "evaluation.json",
                 "samples.png", "reconstructions.png", "curves.png", "latent.png"):
        assert (trained / name).is_file(), name
    summary = json.loads((trained / "evaluation.json").read_text())
    assert summary["units"].startswith("nats per datapoint") and summary["importance_samples"] == 16
    for key in ("elbo", "reconstruction", "kl", "log_px", "gap", "bits_per_dim"):
        assert key in summary
    assert summary["active_units"] <= summary["latent_dim"] == 2


def test_train_prints_the_test_metrics_last(tmp_path, capsys):
    assert main(["train", *TINY, "--set", "train.epochs=1", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("run folder:")
    assert any(line.startswith("log p(x)") for line in out[-16:])


def test_evaluate_gives_the_same_numbers_for_the_same_seed(trained, capsys):
    assert main(["evaluate", str(trained), "--samples", "50", "--seed", "3"]) == 0
    first = (trained / "evaluation-K50-seed3.json").read_text()
    out = capsys.readouterr().out
    assert "log p(x)  [importance sampled, K=50]" in out and "gap log p(x) - ELBO" in out and "bits/dim" in out
    assert main(["evaluate", str(trained), "--samples", "50", "--seed", "3"]) == 0
    assert (trained / "evaluation-K50-seed3.json").read_text() == first
    rows = (trained / "evaluation-K50-seed3.csv").read_text().splitlines()
    assert rows[0] == ("index,elbo_nats,reconstruction_nats,kl_nats,log_px_nats,gap_nats,elbo_stderr_nats,"
                       "log_px_stderr_nats,gap_stderr_nats") and len(rows) == 41
    assert not list(trained.glob("*.batches"))


def test_sample_writes_a_grid(trained, capsys):
    assert main(["sample", str(trained), "--n", "16"]) == 0
    assert (trained / "samples-n16-seed0-mean.png").is_file()
    out = trained / "mine.png"
    assert main(["sample", str(trained), "--n", "9", "--pixels", "sample", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", str(trained), "--n", "9", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_autoregressive_likelihood_draws_its_pictures_and_refuses_a_mean(tmp_path, capsys):
    run_dir = tmp_path / "pixel"
    assert main(["train", *TINY, "--set", "model.likelihood=pixelcnn-bernoulli", "--set", "train.epochs=1",
                 "--out", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "samples.png").is_file() and (run_dir / "reconstructions.png").is_file()
    assert main(["sample", str(run_dir), "--n", "4"]) == 0  # no closed-form E[x|z]: draws by default
    assert (run_dir / "samples-n4-seed0-sample.png").is_file()
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--n", "4", "--pixels", "mean"]) == 2
    err = capsys.readouterr().err
    assert "no closed-form mean" in err and "--pixels sample" in err


def test_resume_continues_to_more_epochs(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run_dir), "--no-progress"]) == 0
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=3", "--no-progress"]) == 0
    assert load_checkpoint(run_dir / CHECKPOINT)["epoch"] == 3
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2, 3]
    assert "resuming" in capsys.readouterr().out
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert "already finished its 3 epochs" in capsys.readouterr().out


def test_list_shows_every_component_with_its_options(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for registry in REGISTRIES.values():
        for name in registry.names():
            assert name in out
    assert "components = 10   (int)" in out and 'binarize = "dynamic"' in out


def test_config_prints_the_resolved_toml(capsys):
    assert main(["config", "--set", "model.prior=mixture", "--set", "model.prior.components=3"]) == 0
    out = capsys.readouterr().out
    assert '[model.prior]\nname = "mixture"\ncomponents = 3' in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--set", "model.prior=gaussian-mixture"], "unknown prior 'gaussian-mixture'"),
        (["train", "--set", "model.prior=mixture", "--set", "model.prior.components=ten"], "must be int"),
        (["train", "--set", "model.latent_dim=0"], "latent_dim must be >= 1"),
        (["train", "--set", "train.lr=-0.1"], "train.lr must be a finite number > 0"),
        (["train", "missing.toml"], "does not exist"),
        (["train", *TINY, "--set", "data.binary=false", "--set", "model.likelihood.binarize=none"],
         "not exactly 0 or 1"),
        (["train", *TINY, "--set", "model.likelihood=gaussian", "--set", "train.objective=iwae",
          "--set", "train.kl_warmup_epochs=2"], "importance-weighted bound"),
        (["train", *TINY, "--set", "model.latent_dim=6", "--set", "model.prior=categorical",
          "--set", "model.prior.classes=3"], "must share one latent space"),
        (["train", *TINY, "--set", "model.latent_dim=6", "--set", "model.prior=categorical", "--set", "model.prior.classes=3",
          "--set", "model.guide=categorical", "--set", "model.guide.classes=3", "--set", "train.objective=elbo-analytic-kl"],
         "train it with enumerate, score-function"),
        (["train", *TINY, "--set", "train.objective=gumbel-softmax", "--set", "train.objective.temperature=0"],
         "temperature must be > 0"),
        (["evaluate", "."], "not a pyro-vae run folder"),
        (["list", "priorz"], "unknown kind 'priorz'"),
    ],
)
def test_errors_exit_2_with_a_one_paragraph_message(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "r")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_an_existing_run_folder_is_refused_without_overwrite(trained, capsys):
    assert main(["train", *TINY, "--out", str(trained), "--no-progress"]) == 2
    assert "already exists (it holds checkpoint.pt, config.toml," in (err := capsys.readouterr().err)
    assert "Pass --overwrite to replace it" in err


def test_resume_refuses_config_changes_and_a_second_config(trained, capsys):
    assert main(["train", "--resume", str(trained), "--set", "model.latent_dim=3"]) == 2
    err = capsys.readouterr().err
    assert "--resume can only change data.features, data.path, data.test_path, data.vocabulary, train.callbacks, train.epochs" in err
    assert "model.latent_dim" in err
    assert main(["train", "x.toml", "--resume", str(trained)]) == 2
    assert "not both" in capsys.readouterr().err


def test_the_console_entry_point_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "list", "prior"], capture_output=True, text=True)
    assert done.returncode == 0 and "mixture" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "pyro_vae", "list", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_train_seed_and_device_are_their_set_forms_and_quiet_prints_nothing(tmp_path, capsys):
    tiny = ["--set", "data=synthetic", "--set", "data.n_train=32", "--set", "data.n_test=8", "--set", "data.side=4",
            "--set", "model.latent_dim=2", "--set", "model.network.hidden=[4]", "--set", "train.epochs=1",
            "--set", "eval.samples=2", "--set", "eval.train_subset=4", "--set", "eval.exact_points=0"]
    assert main(["train", *tiny, "--seed", "3", "--device", "cpu", "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out == ""
    assert main(["train", *tiny, "--set", "seed=3", "--set", "device=cpu", "--no-progress",
                 "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = (Config.load(tmp_path / n / "config.toml").to_dict() for n in "ab")
    assert a == b and a["seed"] == 3
    assert torch.equal(torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]["decoder.body.0.weight"],
                       torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]["decoder.body.0.weight"])
    assert main(["evaluate", str(tmp_path / "a"), "--samples", "3", "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)  # stdout holds the JSON alone
    assert summary["importance_samples"] == 3 and set(summary["log_px"]) == {"mean", "stderr"}


def test_help_and_usage_errors_do_not_import_torch():
    """--help, every subcommand's --help and argparse's usage errors answer before torch or pyro is
    imported (each command imports what it runs); `import pyro_vae` alone imports neither."""
    code = (
        "import sys\n"
        "import pyro_vae\n"
        "from pyro_vae.cli import main, build_parser\n"
        "for argv in [['--help'], *[[c, '--help'] for c in build_parser()._subparsers._group_actions[0].choices],"
        " ['train', '--no-such-flag'], ['sample']]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'pyro', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]


def test_every_subcommand_describes_itself_with_examples(capsys):
    from pyro_vae.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "examples:\n  pyro-vae " + name in out, name
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "eval.samples" in capsys.readouterr().out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_knows_every_subcommand_without_importing_torch(shell):
    code = ("import sys\nfrom pyro_vae.cli import main\nmain(['completion', %r])\n"
            "print('torch' in sys.modules, file=sys.stderr)\n" % shell)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.strip() == "False", done.stderr
    from pyro_vae.cli import build_parser

    for name in build_parser()._subparsers._group_actions[0].choices:
        assert name in done.stdout
    assert "--trust-code" in done.stdout and "pyro-vae" in done.stdout
