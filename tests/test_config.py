"""The registries and the config: one code path from TOML, CLI overrides and Python."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyro_vae import VAE, Config, ConfigError, MixturePrior
from pyro_vae.config import REGISTRIES, apply_overrides, parse_value, read_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def test_unknown_component_lists_the_valid_names():
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"model": {"prior": "mixtur"}})
    message = str(e.value)
    assert "unknown prior 'mixtur'" in message and "Did you mean 'mixture'" in message
    for name in REGISTRIES["prior"].names():
        assert name in message


def test_unknown_option_lists_the_valid_options():
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"model": {"prior": {"name": "mixture", "component": 3}}})
    message = str(e.value)
    assert "'component'" in message and "Did you mean 'components'" in message
    assert "components (int, default 10)" in message


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"model": {"prior": {"name": "mixture", "components": "ten"}}}, "model.prior.components must be int"),
        ({"model": {"prior": {"name": "mixture", "components": True}}}, "must be int"),
        ({"model": {"prior": {"name": "mixture", "components": 2.5}}}, "must be int"),
        ({"model": {"prior": {"name": "mixture", "components": 0}}}, "components must be >= 1"),
        ({"model": {"latent_dim": 0}}, "latent_dim must be >= 1"),
        ({"train": {"lr": 0}}, "train.lr must be a finite number > 0"),
        ({"train": {"lr": "fast"}}, "train.lr must be float"),
        ({"train": {"epochs": 0}}, "train.epochs must be >= 1"),
        ({"train": {"kl_warmup_start": 2.0}}, "kl_warmup_start must be in (0, 1]"),
        ({"train": {"kl_warmup_start": 0.0}}, "must stay positive"),
        ({"train": {"lr_final": 0.0}}, "lr_final must be in (0, 1]"),
        ({"train": {"lr_final": 2.0}}, "lr_final must be in (0, 1]"),
        ({"model": {"likelihood": {"name": "bernoulli", "binarize": "sometimes"}}}, "'dynamic' | 'static' | 'none'"),
        ({"model": {"network": {"name": "mlp", "hidden": [400, -1]}}}, "hidden widths must be >= 1"),
        ({"model": {"network": {"name": "mlp", "hidden": 400}}}, "must be list of int"),
        ({"train": {"objective": {"name": "renyi", "alpha": 1.0}}}, "use objective \"elbo\""),
        ({"device": "tpu"}, "device must be"),
        ({"trian": {}}, "Did you mean 'train'"),
        ({"model": {"latent": 3}}, "Valid keys: program, latent_dim"),
        ({"model": {"prior": {"components": 3}}}, "needs a 'name'"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(raw, fragment):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(raw)
    assert fragment in str(e.value)


def test_python_construction_checks_types_too():
    with pytest.raises(ConfigError, match="option 'components' must be int"):
        MixturePrior(components="ten")
    with pytest.raises(ConfigError, match="Did you mean 'components'"):
        MixturePrior(component=3)
    assert MixturePrior(components=3).options() == {"components": 3, "init_spread": 1.0, "init_scale": 1.0}


def test_resolved_config_fills_every_default():
    config = Config.from_dict({})
    assert config.model.prior == {"name": "standard-normal"}
    assert config.model.likelihood == {"name": "bernoulli", "binarize": "dynamic"}
    assert config.model.network == {"name": "mlp", "hidden": [400], "activation": "softplus", "input": "identity",
                                    "dropout": 0.0, "batch_norm": False}
    assert config.train.objective == {"name": "elbo", "num_particles": 1}
    assert config.data == {"name": "mnist5k"}


def test_toml_round_trip(tmp_path):
    config = Config.from_dict(
        {"model": {"prior": {"name": "mixture", "components": 4}, "network": {"name": "mlp", "hidden": [64, 32]}},
         "data": {"name": "fashion-mnist", "data_dir": "/x"}}
    )
    path = tmp_path / "c.toml"
    config.save(path)
    assert Config.load(path) == config
    assert tomllib.loads(path.read_text())["model"]["prior"] == {"name": "mixture", "components": 4,
                                                                "init_spread": 1.0, "init_scale": 1.0}


def test_optional_options_left_unset_round_trip(tmp_path):
    config = Config.from_dict({"data": "mnist"})
    assert config.data == {"name": "mnist", "data_dir": None}
    path = tmp_path / "c.toml"
    config.save(path)
    assert "data_dir" not in path.read_text()  # TOML has no null: unset stays unset
    assert Config.load(path) == config


def test_three_ways_to_choose_a_component_agree(tmp_path):
    path = tmp_path / "mixture.toml"
    path.write_text('[model.prior]\nname = "mixture"\ncomponents = 10\n')
    from_toml = Config.load(path)
    from_cli = Config.from_dict(apply_overrides({}, ["model.prior=mixture", "model.prior.components=10"]))
    from_python = VAE(prior=MixturePrior(components=10), data_shape=(1, 4, 4), latent_dim=50)
    assert from_toml == from_cli
    assert from_python.spec()["prior"] == from_cli.model.prior
    assert {"program": "vae", **from_python.spec()} == from_cli.to_dict()["model"]


def test_switching_a_component_by_override_drops_the_old_options():
    raw = {"model": {"prior": {"name": "mixture", "components": 3}}}
    config = Config.from_dict(apply_overrides(raw, ["model.prior=learned-gaussian"]))
    assert config.model.prior == {"name": "learned-gaussian", "init_scale": 1.0}


def test_option_override_on_a_component_written_as_a_bare_name():
    raw = {"model": {"prior": "mixture"}}
    config = Config.from_dict(apply_overrides(raw, ["model.prior.components=3"]))
    assert config.model.prior["components"] == 3


def test_option_override_on_a_default_component_keeps_its_name():
    config = Config.from_dict(apply_overrides({}, ["model.network.hidden=[32, 16]"]))
    assert config.model.network == {"name": "mlp", "hidden": [32, 16], "activation": "softplus", "input": "identity",
                                    "dropout": 0.0, "batch_norm": False}


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["model.prior"])
    with pytest.raises(ConfigError, match="dotted path"):
        apply_overrides({}, ["model..prior=x"])
    with pytest.raises(ConfigError, match="not a table"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


@pytest.mark.parametrize(
    "text, value",
    [("10", 10), ("1e-3", 1e-3), ("true", True), ("[400, 200]", [400, 200]), ("mixture", "mixture"),
     ('"quoted"', "quoted"), ("cuda:0", "cuda:0")],
)
def test_override_values_use_toml_syntax(text, value):
    assert parse_value(text) == value


def test_bad_toml_file_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("model = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")


def test_every_example_config_resolves():
    paths = sorted(EXAMPLES.glob("*.toml"))
    assert paths, "examples/configs should hold example configs"
    for path in paths:
        Config.load(path)


def test_registry_descriptions_cover_every_component_and_option():
    for registry in REGISTRIES.values():
        text = registry.describe()
        for name in registry.names():
            cls = registry.get(name)
            assert name in text and cls.summary(), f"{registry.kind} '{name}' needs a one-line docstring"
            for option in cls.option_specs().values():
                assert option.help, f"{registry.kind} '{name}' option '{option.name}' needs help text"


def test_every_config_file_carries_its_schema_version_and_a_newer_one_is_refused(tmp_path):
    from pyro_vae.config import CONFIG_SCHEMA

    text = Config().to_toml()
    assert text.splitlines()[0] == f"schema = {CONFIG_SCHEMA}" and CONFIG_SCHEMA == 1
    old = "\n".join(line for line in text.splitlines() if not line.startswith("schema"))  # from before the key
    (tmp_path / "old.toml").write_text(old)
    assert Config.load(tmp_path / "old.toml") == Config.from_dict({})
    (tmp_path / "new.toml").write_text(text.replace(f"schema = {CONFIG_SCHEMA}", f"schema = {CONFIG_SCHEMA + 1}"))
    with pytest.raises(ConfigError, match=f"schema = {CONFIG_SCHEMA + 1}: it was written by a newer pyro-vae"):
        Config.load(tmp_path / "new.toml")
    with pytest.raises(ConfigError, match="schema must be a version >= 1"):
        Config.from_dict({"schema": 0})


def test_a_config_of_an_earlier_version_with_train_engine_still_loads():
    """train.engine chose between two computations of the same terms (tested equal); it is gone,
    and a run folder written with it still loads, as the same config."""
    for engine in ("direct", "pyro"):
        old = Config.from_dict({"train": {"engine": engine, "epochs": 3}})
        assert old == Config.from_dict({"train": {"epochs": 3}}) and "engine" not in old.to_dict()["train"]
    with pytest.raises(ConfigError, match="unknown key 'engine'"):
        Config.from_dict({"train": {"engine": "gpu"}})


def test_toml_writer_quotes_keys_and_escapes_strings_round_trip():
    """The config writer's TOML reads back as the same table (tomllib), whatever the strings and
    keys hold: quotes, backslashes, newlines, unicode, keys that are not bare."""
    from pyro_vae.config import dumps_toml

    table = {"plain": "a \"quoted\" \\ back\\slash\nnew line\ttab é ∑ 😀 del\x7f nul\x00", "with space": 1, "dotted.key": [1.5, "x"],
             "inf": float("inf"), "nested": {"key with ' quote": {"deep": True, "list": [{"name": "t", "n": 2}]}}}
    assert tomllib.loads(dumps_toml(table)) == table


def test_messages_point_at_the_right_key():
    from pyro_vae.config import apply_overrides

    with pytest.raises(ConfigError, match=r"unknown option 'dataset' for data \(dataset 'mnist5k'\)\. Valid options: "
                                          r"labels .*The dataset itself is chosen by its name: data\.name"):
        Config.from_dict(apply_overrides({}, ["data.dataset=mnist"]))
    with pytest.raises(ConfigError, match="'seed' is a top-level key"):
        Config.from_dict(apply_overrides({}, ["train.seed=3"]))
    # what `pyro-vae list` shows as a default (none) may be set back: TOML has no null, so "none"
    config = Config.from_dict(apply_overrides({}, ["model.prior=hierarchical", "model.prior.top_dim=none"]))
    assert config.model.prior.get("top_dim") is None
