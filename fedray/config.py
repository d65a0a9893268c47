"""The one experiment configuration: every field of a FedAvg run (McMahan et al. 2017, Algorithm 1).

A YAML or JSON config file maps onto `ExperimentConfig` one to one; an unknown key or a bad value is
an error that names the field and what is allowed, raised before any training or Ray work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS = ("2nn", "cnn")
DATASETS = ("mnist", "synthetic")
PARTITIONS = ("iid", "noniid", "unbalanced", "dirichlet")


class ConfigError(ValueError):
    """A config value outside what is allowed; the message names the field."""


@dataclass(frozen=True)
class ExperimentConfig:
    dataset: str = "mnist"  # "mnist", or "synthetic": a small learnable stand-in for tests and smoke runs
    model: str = "2nn"  # "2nn" (784-200-200-10 MLP) or "cnn" (the paper's 5x5 CNN)
    partition: str = "iid"  # iid | noniid (2 label shards per client) | unbalanced | dirichlet
    alpha: float = 0.5  # Dirichlet concentration; used by partition="dirichlet" only
    K: int = 100  # number of clients; the paper uses 100 for MNIST
    C: float = 0.1  # fraction of clients per round; m = max(C*K, 1), so C=0 means one client
    E: int = 1  # local epochs per round
    B: float = 10  # local minibatch size; inf = the whole local data set as one batch (FedSGD at E=1)
    lr: float = 0.1  # client SGD learning rate eta
    lr_decay: float = 1.0  # eta is multiplied by this once per round (the paper's CIFAR runs use 0.99)
    rounds: int = 300  # round budget; the run stops here even if the target was not reached
    target: float = 0.97  # test accuracy whose crossing defines rounds-to-target (2NN 0.97, CNN 0.99)
    stop_at_target: bool = False  # stop extra_rounds after the target is reached instead of at `rounds`
    extra_rounds: int = 0  # rounds still run after the target is reached, with stop_at_target (plots)
    collapse_rounds: int = 0  # stop as diverged after this many evaluations in a row at chance
    # accuracy (<= 12%) that follow one above it: a ReLU net that collapsed keeps a finite loss, so
    # it would otherwise run its whole budget at chance. 0 = never (non-finite losses always stop)
    eval_every: int = 1  # evaluate the global model on the 10k test images every this many rounds
    train_loss: bool = False  # also record the loss on the full 60k training set (paper's Figure 6)
    seed: int = 0  # derives init, partition, client sampling and minibatch order: (seed, round, client)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def m(self) -> int:
        """Clients per round: max(C*K, 1) (Algorithm 1); rounded so that C=0.1, K=100 gives 10."""
        return max(int(round(self.C * self.K)), 1)

    def lr_at(self, round_: int) -> float:
        """The learning rate used in round `round_` (1-based)."""
        return self.lr * self.lr_decay ** (round_ - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["B"] = "inf" if math.isinf(self.B) else int(self.B)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "config") -> "ExperimentConfig":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}"
            )
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentConfig":
        """Read a YAML or JSON config; a `meta` block (as written into config.json) is ignored."""
        d = load_mapping(path)
        d.pop("meta", None)
        return cls.from_dict(d, where=str(path))


def load_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        d = json.loads(text)
    else:
        import yaml

        d = yaml.safe_load(text)
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
    return d


def parse_B(value: Any) -> float:
    """B as the paper writes it: a positive integer, or inf (also 'inf', '.inf', 'infinity')."""
    if isinstance(value, str):
        if value.strip().lower().lstrip(".") in ("inf", "infinity", "∞"):
            return math.inf
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"B: got {value!r}; allowed: an integer >= 1 or 'inf'") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"B: got {value!r}; allowed: an integer >= 1 or 'inf'")
    if math.isinf(value) and value > 0:
        return math.inf
    if value != int(value) or value < 1:
        raise ConfigError(f"B: got {value!r}; allowed: an integer >= 1 or 'inf'")
    return int(value)


_INT_FIELDS = ("K", "E", "rounds", "extra_rounds", "collapse_rounds", "eval_every", "seed")
_FLOAT_FIELDS = ("alpha", "C", "lr", "lr_decay", "target")
_BOOL_FIELDS = ("stop_at_target", "train_loss")


def _coerce(name: str, value: Any) -> Any:
    """Turn YAML/JSON/CLI values into the field's type, naming the field on failure."""
    if name == "B":
        return parse_B(value)
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: got {value!r}; allowed: an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{name}: got {value!r}; allowed: an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{name}: got {value!r}; allowed: an integer")
        return int(f)
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}; allowed: a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: got {value!r}; allowed: a number") from None
    if name in _BOOL_FIELDS:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}; allowed: true or false")
        return value
    if name in ("dataset", "model", "partition") and isinstance(value, str):
        return value.strip().lower().replace("-", "").replace("_", "")
    return value


def _validate(c: ExperimentConfig) -> None:
    def bad(field: str, allowed: str) -> ConfigError:
        return ConfigError(f"{field}: got {getattr(c, field)!r}; allowed: {allowed}")

    if c.dataset not in DATASETS:
        raise bad("dataset", " | ".join(DATASETS))
    if c.model not in MODELS:
        raise bad("model", " | ".join(MODELS))
    if c.partition not in PARTITIONS:
        raise bad("partition", " | ".join(PARTITIONS))
    if not (isinstance(c.K, int) and c.K >= 1):
        raise bad("K", "an integer >= 1")
    if not (0.0 <= c.C <= 1.0):
        raise bad("C", "a number in [0, 1]")
    if not (isinstance(c.E, int) and c.E >= 1):
        raise bad("E", "an integer >= 1")
    object.__setattr__(c, "B", parse_B(c.B))
    if not (c.lr > 0 and math.isfinite(c.lr)):
        raise bad("lr", "a finite number > 0")
    if not (0 < c.lr_decay <= 1):
        raise bad("lr_decay", "a number in (0, 1]")
    if not (isinstance(c.rounds, int) and c.rounds >= 1):
        raise bad("rounds", "an integer >= 1")
    if not (0 < c.target <= 1):
        raise bad("target", "a number in (0, 1]")
    if not (isinstance(c.extra_rounds, int) and c.extra_rounds >= 0):
        raise bad("extra_rounds", "an integer >= 0")
    if not (isinstance(c.collapse_rounds, int) and c.collapse_rounds >= 0):
        raise bad("collapse_rounds", "an integer >= 0 (0 = never)")
    if not (isinstance(c.eval_every, int) and c.eval_every >= 1):
        raise bad("eval_every", "an integer >= 1")
    if not (c.alpha > 0 and math.isfinite(c.alpha)):
        raise bad("alpha", "a finite number > 0")
    if not isinstance(c.seed, int) or c.seed < 0:
        raise bad("seed", "an integer >= 0")
