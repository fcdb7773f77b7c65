"""Training configuration: a typed schema with defaults, read from YAML, overridden from the command line.

A config file has up to four sections, `model`, `data`, `train` and `log`, whose fields are the
dataclasses below. Unknown sections or keys are errors (with a did-you-mean), never ignored: a typo
such as `lr_milestones` for `milestones` would otherwise silently train with the default.

Overrides are `section.key=value` strings, parsed as YAML scalars/lists and checked against the
field's type: `train.lr=2e-4`, `train.milestones=[100,200]`, `train.amp=bf16`, `data.val_dir=null`.
A shortened or lengthened schedule keeps its shape: `train.iterations=N` without `train.milestones`
moves the milestones to the same fractions of N (and says so on stderr).
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import yaml

from ..nn import SIMILARITIES
from ..ops import checks
from .data import parse_num_workers
from .degradations import DEGRADATIONS

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "LogConfig", "Config", "ConfigError",
           "load_config", "apply_overrides", "config_from_dict", "config_to_dict", "packaged_config", "packaged_names",
           "scaled_milestones"]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    """`dlsn.DLSN` constructor arguments (defaults: the published model).

    `arch`: "dlsn", or "edsr" / "rcan" / "fsrcnn" with GLA layers at `gla_positions` (empty: the plain
    network); `dlsn.models.registry.ARCH_FIELDS` lists the fields each architecture reads.

    Ablation switches (the paper's Table 1, Table 2 and Fig. 6): `similarity` "both" (published),
    "dot" (dot product only, no learnable term) or "learned" (learnable term only); `local_fusion`
    false drops the local fusion blocks of every group; `n_hashes` hash rounds in training and
    `eval_n_hashes` at test time (null: the same); `chunk_size` the bucket/chunk size.
    """
    arch: str = "dlsn"
    gla_positions: List[int] = field(default_factory=list)
    scale: int = 2
    n_resgroups: int = 10
    n_resblocks: int = 4
    n_feats: int = 256
    reduction: int = 4
    chunk_size: int = 128
    n_hashes: int = 3
    res_scale: float = 0.1
    rgb_range: float = 1.0
    backend: str = "auto"
    fp32_precision: Optional[str] = None
    check_finite: bool = False
    similarity: str = "both"
    local_fusion: bool = True
    eval_n_hashes: Optional[int] = None


@dataclass
class DataConfig:
    """Training images and the validation benchmark.

    `train_dir`: a DIV2K-layout folder (see `dlsn.sr.data`) or a dataset made from one by `dlsn prepare`
    (read without decoding images; see `dlsn.sr.prepared`); `val_dir`: a benchmark folder of HR images
    (LR made on the fly with the training degradation), whose best mean Y-PSNR during training is
    kept as `best.pt`. `patch_size` is the LR patch side; HR patches are `scale` times larger.
    `noise_level`: the DN noise std on the 0-255 scale (degradation "dn" only).
    `num_workers`: DataLoader worker processes per training process, or "auto" (the CPUs this process
    may use, shared between the training processes of the machine, less one, at most 16;
    `dlsn.sr.data.loader_workers`). Read as "auto" or an int.
    """
    train_dir: Optional[str] = None
    val_dir: Optional[str] = None
    degradation: str = "bi"
    noise_level: float = 30.0
    patch_size: int = 48
    batch_size: int = 16
    num_workers: str = "auto"  # "auto" or a count; __post_init__ makes a count an int
    augment: bool = True
    val_max_images: int = 0

    def __post_init__(self):
        try:
            self.num_workers = parse_num_workers(self.num_workers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class TrainConfig:
    """Optimisation. `milestones` are iterations at which the learning rate is multiplied by `gamma`.

    `pretrained`: weights to start from (an x2 checkpoint for the x3/x4 fine-tunes); keys starting
    with any of `pretrained_exclude` are left at their initialisation (the upsampler `tail.0.`).
    `ema_decay` 0 disables the EMA; `grad_clip` 0 disables clipping (max global L2 norm otherwise).
    `amp`: "none", "bf16" or "fp16" (fp16 uses a GradScaler).
    `compile`: run the model through `torch.compile(fullgraph=True)` (the first steps compile:
    minutes on a CPU; the EMA copy stays eager).
    """
    iterations: int = 300000
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    milestones: List[int] = field(default_factory=lambda: [200000])
    gamma: float = 0.5
    ema_decay: float = 0.0
    grad_clip: float = 0.0
    amp: str = "none"
    seed: int = 0
    device: str = "auto"
    pretrained: Optional[str] = None
    pretrained_exclude: List[str] = field(default_factory=lambda: ["tail.0."])
    compile: bool = False


@dataclass
class LogConfig:
    """Output folder and how often (in iterations) to print, validate and checkpoint; 0 disables."""
    out_dir: str = "runs/dlsn"
    log_every: int = 100
    val_every: int = 5000
    save_every: int = 5000
    keep_last: int = 2
    tensorboard: bool = True
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


_AMP_MODES = ("none", "bf16", "fp16")


def _suggest(name, choices):
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(choices))}"


def _coerce(value, annotation, where):
    """`value` checked against (and lightly converted to) the dataclass field type `annotation`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin in (list, List):
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported field type {annotation}")  # pragma: no cover


def _section_types():
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in hints}


def _rule(check, *args):
    """A shared argument rule (`dlsn.ops.checks`) whose ValueError becomes a ConfigError."""
    try:
        return check(*args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate(cfg: Config) -> Config:
    _rule(checks.one_of, "train.amp", cfg.train.amp, _AMP_MODES)
    _rule(checks.one_of, "data.degradation", cfg.data.degradation, DEGRADATIONS)
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"train.betas must be two numbers, got {cfg.train.betas}")
    _rule(checks.one_of, "model.similarity", cfg.model.similarity, SIMILARITIES)
    for where, value in (("model.n_hashes", cfg.model.n_hashes), ("model.eval_n_hashes", cfg.model.eval_n_hashes),
                         ("model.chunk_size", cfg.model.chunk_size)):
        if value is not None:
            _rule(checks.positive_int, where, value)
    if sorted(cfg.train.milestones) != cfg.train.milestones:
        raise ConfigError(f"train.milestones must be increasing, got {cfg.train.milestones}")
    past = [m for m in cfg.train.milestones if m > cfg.train.iterations or m < 1]
    if past:
        raise ConfigError(f"train.milestones {past} lie outside the schedule of train.iterations="
                          f"{cfg.train.iterations} iterations (an override of train.iterations alone scales the "
                          "config's milestones with it)")
    if cfg.data.noise_level < 0:
        raise ConfigError(f"data.noise_level must be >= 0, got {cfg.data.noise_level}")
    for where, value in (("data.patch_size", cfg.data.patch_size), ("data.batch_size", cfg.data.batch_size),
                         ("train.iterations", cfg.train.iterations)):
        if value <= 0:
            raise ConfigError(f"{where} must be positive, got {value}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}")
    return cfg


def config_from_dict(raw, source="config") -> Config:
    """A `Config` from nested dicts; unknown sections/keys and wrongly typed values are `ConfigError`s."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections = _section_types()
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section {name!r}{_suggest(str(name), sections)}")
        cls = sections[name]
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {name}.{key}{_suggest(str(key), fields)}")
            kwargs[key] = _coerce(value, hints[key], f"{source}: {name}.{key}")
        built[name] = cls(**kwargs)
    return _validate(Config(**built))


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def scaled_milestones(milestones, iterations: int, new_iterations: int) -> List[int]:
    """The `milestones` of a schedule of `iterations` moved to the same fractions of `new_iterations`
    (each at least 1; milestones that fall together are merged)."""
    return sorted({max(1, round(m * new_iterations / iterations)) for m in milestones})


def _scale_schedule(raw, iterations, given):
    """A `train.iterations` override without `train.milestones` keeps the schedule's shape: the
    milestones scale with it (as `dlsn demo --iters` does), said in one line on stderr."""
    new, old = raw["train"]["iterations"], raw["train"]["milestones"]
    if "train.iterations" not in given or "train.milestones" in given or not old:
        return
    if type(new) is not int or new <= 0 or new == iterations:  # a bad value is _validate's to report
        return
    raw["train"]["milestones"] = scaled_milestones(old, iterations, new)
    print(f"note: train.milestones {old} scaled with train.iterations {iterations} -> {new}: "
          f"{raw['train']['milestones']} (give train.milestones=[...] to choose them)", file=sys.stderr)


def apply_overrides(cfg: Config, overrides) -> Config:
    """`cfg` with `section.key=value` overrides applied (values parsed as YAML, then type-checked).

    A `train.iterations` override without `train.milestones` scales the milestones with it."""
    raw = config_to_dict(cfg)
    given = set()
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr=2e-4")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override {item!r}: the key must be section.key, e.g. train.lr")
        section, key = parts
        if section not in raw:
            raise ConfigError(f"override {item!r}: unknown section {section!r}{_suggest(section, raw)}")
        if key not in raw[section]:
            raise ConfigError(f"override {item!r}: unknown key {section}.{key}{_suggest(key, raw[section])}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse the value: {exc}") from None
        raw[section][key] = value
        given.add(f"{section}.{key}")
    _scale_schedule(raw, cfg.train.iterations, given)
    return config_from_dict(raw, source="overrides")


def load_config(path, overrides=()) -> Config:
    """Read a YAML config (a file path, or the name of a packaged config such as `dlsn_x2`)."""
    path = Path(path)
    if not path.is_file() and packaged_config(str(path)).exists():
        path = packaged_config(str(path))
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found (packaged configs: {', '.join(packaged_names())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return apply_overrides(config_from_dict(raw, source=str(path)), overrides)


def packaged_config(name: str) -> Path:
    """Path of a config shipped in `dlsn/sr/configs` (`"dlsn_x2"` or `"dlsn_x2.yaml"`)."""
    name = name if name.endswith(".yaml") else name + ".yaml"
    return Path(__file__).resolve().parent / "configs" / name


def packaged_names():
    return sorted(p.stem for p in (Path(__file__).resolve().parent / "configs").glob("*.yaml"))
