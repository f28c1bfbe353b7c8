"""Argument dataclasses validated at load (every problem at once, naming key and file), shipped presets,
and the one registry shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_lines
from unlearn.attacks.runner import SCORES
from unlearn.auditors.audit import AuditArgs
from unlearn.config import build_args, presets
from unlearn.curvature import CURVATURES, FIRST_ORDER_BACKENDS, needs_double_backward
from unlearn.errors import ConfigError, InputError
from unlearn.methods import METHODS, get_method, load_method_args
from unlearn.methods.attribution import ATTRIBUTION, UnTracArgs
from unlearn.registry import Registry
from unlearn.unlearner import UnlearnArgs, register

# Each bad value must be refused when the arguments are loaded, naming the key.
BAD_METHOD_VALUES = [
    ("soul", {"betas": [0.9]}, "key 'betas' must have 2 values, got 1"),
    ("soul", {"betas": [0.9, 1.5]}, "key 'betas' must be < 1"),
    ("iau", {"adam_eps": -1}, "key 'adam_eps' must be > 0, got -1.0"),
    ("newton", {"solver": "bogus"}, "key 'solver' must be one of cg, lissa, got 'bogus'"),
    ("newton", {"samples": 0}, "key 'samples' must be >= 1, got 0"),
    ("newton", {"curvature_examples": -5}, "key 'curvature_examples' must be >= 0, got -5"),
    ("newton", {"damping": -0.1}, "key 'damping' must be >= 0"),
    ("npo", {"lr": 0}, "key 'lr' must be > 0"),
    ("npo", {"max_steps": 2.5}, "key 'max_steps' must be int"),
    ("npo", {"stop_alpha": 1.0}, "key 'stop_alpha' must be < 1"),
    ("npo", {"optimizer": "lion"}, "key 'optimizer' must be one of adamw, sgd"),
    ("npo", {"scope": "last:x"}, "expected last:N"),
    ("npo", {"beta": float("nan")}, "key 'beta' must be a finite number"),
    ("graddiff", {"retain_loss": "mse"}, "key 'retain_loss' must be one of nll, kl"),
    ("soul", {"double_momentum": "yes"}, "key 'double_momentum' must be bool"),
]


@pytest.mark.parametrize(("method", "values", "message"), BAD_METHOD_VALUES,
                         ids=[f"{m}-{next(iter(v))}" for m, v, _ in BAD_METHOD_VALUES])
def test_bad_method_values_are_refused_at_load(tmp_path: Path, method: str, values: dict, message: str) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as exc:
        load_method_args(method, cfg)
    assert message in str(exc.value) and str(cfg) in str(exc.value)
    with pytest.raises(ConfigError, match="key '"):  # the same from Python overrides
        load_method_args(method, overrides=values)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    cfg = write_lines(tmp_path / "many.yaml", ["lr: -1", "betta: 0.2", "max_steps: ten", "betas: [0.9]"])
    with pytest.raises(ConfigError) as exc:
        load_method_args("soul", cfg)
    text = str(exc.value)
    assert text.startswith(f"{cfg}: ") and "\n" not in text
    for part in ("unknown key 'betta'", "key 'max_steps' must be int", "key 'lr' must be > 0",
                 "key 'betas' must have 2 values"):
        assert part in text, text


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config is for method 'npo'"):
        load_method_args("graddiff", write_lines(tmp_path / "m.yaml", ["method: npo"]))
    with pytest.raises(InputError, match="missing.yaml: config not found .*newton_exact"):
        load_method_args("npo", tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="expected a mapping"):
        load_method_args("npo", write_lines(tmp_path / "l.yaml", ["- 1"]))
    with pytest.raises(InputError, match="invalid yaml"):
        load_method_args("npo", write_lines(tmp_path / "y.yaml", ["lr: [1"]))
    with pytest.raises(ConfigError, match="unknown method 'bogus'; known: grad_ascent, graddiff"):
        get_method("bogus")


def test_defaults_live_in_the_dataclasses_and_presets_resolve_by_name() -> None:
    # No yaml is read for the defaults: the resolved configuration is the dataclass's own.
    for name in METHODS.names():
        assert load_method_args(name).to_dict() == get_method(name).args_cls().to_dict()
    newton = load_method_args("newton")
    assert (newton.form, newton.curvature, newton.max_steps, newton.max_update_ratio) == ("forget", "ekfac", 20, 0.05)
    npo = load_method_args("npo")
    assert (npo.lr, npo.max_steps) == (1e-4, 200)
    assert "newton_exact" in presets("methods") and {"all", "soul_vs_adamw"} <= set(presets("compare"))
    exact = load_method_args("newton", "newton_exact", {"seed": 3})
    assert (exact.form, exact.curvature, exact.max_steps, exact.seed) == ("retain", "ggn", 1, 3)


def test_other_argument_classes_validate() -> None:
    with pytest.raises(ConfigError, match="key 'batch_size' must be >= 1, got 0"):
        AuditArgs(batch_size=0)
    with pytest.raises(ConfigError, match="unknown score.*bogus"):
        AuditArgs(scores=("loss", "bogus"))
    with pytest.raises(ConfigError, match="key 'k' must be <= 1"):
        AuditArgs(k=1.5)
    with pytest.raises(ConfigError, match="attribution arguments: .*key 'steps' must be >= 1.*key 'optimizer'"):
        build_args(UnTracArgs, {"steps": 0, "optimizer": "x"}, "attribution arguments")
    assert build_args(UnlearnArgs, {"lr": 3, "weight_decay": "1e-2"}).weight_decay == 0.01  # yaml 1.1 '1e-2'
    assert isinstance(build_args(UnlearnArgs, {"lr": 3}).lr, float)


def test_registries_share_one_shape() -> None:
    reg: Registry = Registry("thing")

    def f() -> int:
        return 1

    assert reg.register("f", flag=True)(f) is f and reg.get("f") is f  # stores and returns the callable itself
    with pytest.raises(ConfigError, match="thing 'f' is already registered"):
        reg.register("f")(f)
    with pytest.raises(ConfigError, match="unknown thing 'g'; known: f"):
        reg.get("g")
    with pytest.raises(ConfigError, match="already registered"):
        register("npo", UnlearnArgs, "dup")(lambda *a, **k: None)
    from unlearn.methods.npo import npo

    assert get_method("npo").run is npo  # the registered function is the bare one, nothing wrapped
    # capability flags, not name lists
    assert set(FIRST_ORDER_BACKENDS) == {"gnb", "fisher", "kfac", "ekfac"}
    assert needs_double_backward("ggn") and not needs_double_backward("ekfac")
    assert all(CURVATURES.entry(n).info["double_backward"] != CURVATURES.entry(n).info["first_order"]
               for n in CURVATURES)
    assert SCORES.names(one_pass=True) == ["loss", "zlib", "mink", "minkpp"]
    assert set(ATTRIBUTION.names()) == {"untrac", "untrac-inv", "tracin"}


def test_every_shipped_method_preset_builds_and_changes_something() -> None:
    import yaml

    from unlearn.config import presets_dir

    for name in presets("methods"):
        raw = yaml.safe_load((presets_dir() / "methods" / f"{name}.yaml").read_text())
        method = raw.pop("method")
        args = load_method_args(method, name)
        default = get_method(method).args_cls()
        assert args.to_dict() != default.to_dict(), name  # a preset that equals the defaults is noise
        for key, value in raw.items():
            assert getattr(args, key) == (tuple(value) if isinstance(value, list) else value), (name, key)
    soul = load_method_args("soul", "soul_paper")
    assert (soul.hessian, soul.double_momentum, soul.gamma_tokens, soul.lr) == ("sq_grad", True, 5120, 5e-6)
    assert load_method_args("simnpo", "simnpo_paper").forget_weight == 0.125


@pytest.mark.parametrize("name", presets("accelerate"))
def test_every_shipped_accelerate_preset_loads_with_accelerate_itself(name: str) -> None:
    """Each configs/accelerate yaml is read by accelerate's own loader (unknown keys and bad values fail there),
    and what it says matches its name."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    from unlearn.config import resolve_config

    c = ClusterConfig.from_yaml_file(str(resolve_config(name, "accelerate")))
    assert c.num_processes >= 1
    kind = {"deepspeed": DistributedType.DEEPSPEED, "fsdp": DistributedType.FSDP,
            "multi_cpu": DistributedType.MULTI_CPU, "multi_gpu": DistributedType.MULTI_GPU,
            "single": DistributedType.NO}
    expected = next(v for k, v in kind.items() if name.startswith(k))
    if expected == DistributedType.MULTI_CPU:  # what starts several CPU processes under `accelerate launch`
        expected = DistributedType.MULTI_GPU
        assert c.use_cpu and c.num_processes > 1, name
    assert c.distributed_type == expected, (name, c.distributed_type)
    if expected == DistributedType.DEEPSPEED:
        stage = c.deepspeed_config.get("zero_stage")
        assert stage == (2 if "zero2" in name else 3), (name, c.deepspeed_config)
        assert ("offload" in name) == (c.deepspeed_config.get("offload_param_device", "none") != "none")
    if expected == DistributedType.FSDP:
        assert c.fsdp_config
