"""Config loading, overrides and the promised error messages."""
import copy

import pytest
import yaml

from univseg.config import ConfigError, load_config, resolve_config_path, save_config, validate_config


def test_tiny_config_validates_with_defaults(tiny_raw):
    cfg = validate_config(tiny_raw)
    assert cfg.trained_domains == ["city", "rural"]
    assert cfg.model.embed_dim == 8 and cfg.method.similarity == "cosine"
    assert cfg.domains[1].val_split == "val"


def test_unknown_top_level_key_suggests_closest(tiny_raw):
    tiny_raw["trian"] = {"iters": 3}
    with pytest.raises(ConfigError) as e:
        validate_config(tiny_raw, source="x.yaml")
    msg = str(e.value)
    assert "x.yaml" in msg and "trian: unknown key" in msg and "Did you mean 'train'?" in msg


def test_unknown_nested_key_names_full_path(tiny_raw):
    tiny_raw["train"]["optimizer"]["learning_rate"] = 0.1
    tiny_raw["domains"][1]["batch_sise"] = 3
    with pytest.raises(ConfigError) as e:
        validate_config(tiny_raw)
    msg = str(e.value)
    assert "train.optimizer.learning_rate: unknown key" in msg
    assert "domains[1].batch_sise: unknown key. Did you mean 'batch_size'?" in msg


def test_wrong_type_names_key_and_value(tiny_raw):
    tiny_raw["train"]["iters"] = "many"
    with pytest.raises(ConfigError, match=r"train\.iters: .*integer.*'many'"):
        validate_config(tiny_raw)


def test_literal_choices_are_listed(tiny_raw):
    tiny_raw["method"]["similarity"] = "l2"
    with pytest.raises(ConfigError, match=r"method\.similarity: .*'cosine' or 'dot'"):
        validate_config(tiny_raw)


def test_dataset_params_are_validated_with_path(tiny_raw):
    tiny_raw["domains"][0]["dataset"]["stlye"] = "city"
    with pytest.raises(ConfigError, match=r"domains\[0\]\.dataset\.stlye: unknown key\. Did you mean 'style'\?"):
        validate_config(tiny_raw)


def test_unknown_dataset_type_and_method_list_available(tiny_raw):
    tiny_raw["domains"][0]["dataset"]["type"] = "cityscape"
    with pytest.raises(ConfigError, match=r"domains\[0\]\.dataset\.type: unknown dataset 'cityscape'\. Did you mean 'cityscapes'\?"):
        validate_config(tiny_raw)
    tiny_raw["domains"][0]["dataset"]["type"] = "synthetic"
    tiny_raw["method"]["name"] = "univ-ful"
    with pytest.raises(ConfigError, match=r"method\.name: unknown method 'univ-ful'\. Did you mean 'univ-full'\?"):
        validate_config(tiny_raw)


def test_transform_errors_name_the_domain_key(tiny_raw):
    tiny_raw["domains"][0]["train_transforms"] = [{"type": "random_crp", "size": [8, 8]}]
    with pytest.raises(ConfigError, match=r"domains\[0\]\.train_transforms\[0\]\.type: .*random_crop"):
        validate_config(tiny_raw)


def test_duplicate_domains_and_unknown_method_domain(tiny_raw):
    tiny_raw["method"]["domains"] = ["cty"]
    with pytest.raises(ConfigError, match="unknown domain 'cty'"):
        validate_config(tiny_raw)
    tiny_raw["method"]["domains"] = None
    tiny_raw["domains"][1]["name"] = "city"
    with pytest.raises(ConfigError, match="unique"):
        validate_config(tiny_raw)


def test_overrides_by_dotted_path_index_and_name(tiny_yaml):
    cfg = load_config(
        tiny_yaml,
        ["train.iters=17", "domains.0.batch_size=3", "domains.rural.labeled.count=2", "method.domains=[city]", "model.mean=[1,2,3]"],
    )
    assert cfg.train.iters == 17 and cfg.domains[0].batch_size == 3
    assert cfg.domains[1].labeled.count == 2
    assert cfg.trained_domains == ["city"] and cfg.model.mean == (1.0, 2.0, 3.0)


def test_override_errors(tiny_yaml):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(tiny_yaml, ["train.iters"])
    with pytest.raises(ConfigError, match="no item named 'forest'"):
        load_config(tiny_yaml, ["domains.forest.batch_size=2"])
    with pytest.raises(ConfigError, match="train.iter: unknown key. Did you mean 'iters'"):
        load_config(tiny_yaml, ["train.iter=5"])


def test_environment_variables_with_defaults(tiny_yaml, monkeypatch):
    monkeypatch.setenv("UNIVSEG_TEST_NAME", "from-env")
    cfg = load_config(tiny_yaml, ["name=${UNIVSEG_TEST_NAME}", "domains.0.train_split=${UNSET_VAR_X:-train}"])
    assert cfg.name == "from-env" and cfg.domains[0].train_split == "train"
    with pytest.raises(ConfigError, match="UNSET_VAR_X is not set"):
        load_config(tiny_yaml, ["name=${UNSET_VAR_X}"])


def test_saved_config_round_trips(tiny_yaml, tmp_path):
    cfg = load_config(tiny_yaml, ["train.iters=9"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert yaml.safe_load(out.read_text())["train"]["optimizer"]["momentum"] == 0.9  # defaults are written out


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="Did you mean 'demo'"):
        resolve_config_path("dmeo")


def test_builtin_configs_all_validate():
    from univseg.config import packaged_configs

    names = packaged_configs()
    assert "demo" in names
    for name in names:
        load_config(resolve_config_path(name))


def test_readme_yaml_examples_validate():
    """The configuration and dataset examples in the README stay valid."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    assert len(blocks) == 2
    validate_config(yaml.safe_load(blocks[0]))
    dataset = yaml.safe_load(blocks[1])["dataset"]
    validate_config({"domains": [{"name": "mine", "dataset": dataset}]})


def test_dataset_entry_problems_name_the_key(tiny_raw):
    tiny_raw["domains"][1]["dataset"].pop("type")
    tiny_raw["domains"][0]["unlabeled"] = {"extra_splits": ["tset"]}
    with pytest.raises(ConfigError) as e:
        validate_config(tiny_raw)
    assert "domains[0].unlabeled.extra_splits[0]: dataset 'synthetic' has no split 'tset'" in str(e.value)
    del tiny_raw["domains"][0]["unlabeled"]
    with pytest.raises(ConfigError, match=r"domains\[1\]\.dataset: missing 'type' key\..*Available dataset types: .*synthetic"):
        validate_config(tiny_raw)


def test_lower_layers_never_import_config_or_engine():
    """data/, models/ and losses/ import neither univseg.config nor univseg.engine (not even lazily)."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    offending = []
    for layer in ("data", "models", "losses"):
        for path in sorted((src / "univseg" / layer).rglob("*.py")):
            package = list(path.relative_to(src).parent.parts)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                    module = ".".join(p for p in (base, node.module) if p)
                    modules = [module] + [f"{module}.{a.name}" for a in node.names]
                else:
                    continue
                bad = [m for m in modules if m.split(".")[:2] in (["univseg", "config"], ["univseg", "engine"])]
                offending += [f"{path.relative_to(src)}:{node.lineno}: {m}" for m in bad]
    assert not offending, "\n".join(offending)


def test_imagenet_weights_bring_their_normalisation_unless_set(tiny_raw):
    tiny_raw["model"].update({"backbone": "efficientnet_lite0", "pretrained": "imagenet"})
    model = validate_config(copy.deepcopy(tiny_raw)).model
    assert model.mean == (127.0, 127.0, 127.0) and model.std == (128.0, 128.0, 128.0)
    tiny_raw["model"]["mean"] = [1, 2, 3]
    model = validate_config(copy.deepcopy(tiny_raw)).model
    assert model.mean == (1, 2, 3) and model.std == (128.0, 128.0, 128.0)  # explicit mean kept, std still the weights'
    tiny_raw["model"]["pretrained"] = None
    assert validate_config(tiny_raw).model.std == (58.395, 57.12, 57.375)


@pytest.mark.parametrize("key, value", [("backbone", "mobilenetv2"), ("decoder", "deeplab")])
def test_unknown_backbone_or_decoder_names_the_key(tiny_raw, key, value):
    tiny_raw["model"][key] = value
    with pytest.raises(ConfigError, match=f"model.{key}: unknown .*Did you mean"):
        validate_config(tiny_raw)


@pytest.mark.parametrize("method, changed", [("joint", []), ("univ-full", []), ("souly", ["method.souly.image_size: 32 -> [32, 48]"])])
def test_config_changes_ignore_the_settings_of_other_methods(tiny_raw, method, changed):
    """A run is reusable after a change to another method's section (method.souly of a joint run), not to its own."""
    from univseg.config import config_changes

    tiny_raw["method"] = {"name": method}
    old = validate_config(copy.deepcopy(tiny_raw))
    tiny_raw["method"]["souly"] = {"image_size": [32, 48]}
    assert config_changes(old, validate_config(copy.deepcopy(tiny_raw))) == changed
    tiny_raw["method"]["consistency"] = {"threshold": 0.9}  # read by fixmatch / unimatch / univ-match only
    tiny_raw["model"]["embed_dim"] = 16
    assert sorted(config_changes(old, validate_config(tiny_raw))) == sorted(changed + ["model.embed_dim: 8 -> 16"])
    other = copy.deepcopy(tiny_raw)
    other["method"]["name"] = "joint" if method != "joint" else "univ-full"
    assert any(c.startswith("method.name:") for c in config_changes(old, validate_config(other)))
