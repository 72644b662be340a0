"""Study configuration: one YAML file naming sources, tasks and the factor values to try.

Validated with pydantic; unknown keys and bad values are errors that name the key. The
``factors:`` block is made from results.factors' table (config keys, value checks, defaults:
the paper's "Deep Standard": last layer, average pooling, L2, no PCA, no augmentation, no
fine-tuning).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from transferlab.errors import TransferlabError
from transferlab.heads.probe_grid import DEFAULT_CS
from transferlab.results.factors import Factor, attach_check, config_factors, get_factor, on_change

# range-checked numbers: every count >= 1, every "0 = off" >= 0, every rate finite and > 0
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Version of how a row is evaluated (validation score, test subset, intervals): rows of an
# older protocol are never reused as if they were current.
EVALUATION_PROTOCOL = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceEntry(_Strict):
    """A source: a spec (built-in name, timm:ARCH, finetuned:PATH, concat:[a,b], ...) with
    optional weights file and a short label for the report."""

    spec: str
    weights: str | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.spec


class TaskEntry(_Strict):
    name: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class TrainEntry(_Strict):
    """A source network trained from scratch by the study (learning factors, issue 6)."""

    name: str | None = None  # label in the report; `train:NAME` names it in sources (concat:[train:a, train:b])
    arch: Literal["alexnet", "vgg16"] = "alexnet"
    width: Literal["tiny", "small", "medium", "large"] = "tiny"
    source_task: str | list[str] = "fashion_mnist"
    resolution: Annotated[int, Field(ge=32)] = 32
    epochs: PositiveInt = 3
    snapshots: list[PositiveInt] = Field(default_factory=list)
    classes: Annotated[int, Field(ge=2)] | None = None
    images_per_class: PositiveInt | None = None
    seed: NonNegativeInt = 0
    options: dict[str, Any] = Field(default_factory=dict)  # root: DIR for a benchmark, quick: true
    finetune: bool = False  # also run factors.finetune's "on" for the final network on every task

    @model_validator(mode="after")
    def _check(self) -> TrainEntry:
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        unknown = set(self.options) - {"root", "quick", "lr", "batch_size", "dropout", "threads"}
        if unknown:
            raise ValueError(f"unknown train option {sorted(unknown)[0]!r} "
                             "(use root, quick, lr, batch_size, dropout, threads)")
        return self


class ProbeConfig(_Strict):
    loss: Literal["squared_hinge", "logistic"] = "squared_hinge"
    Cs: list[PositiveFloat] = Field(default_factory=lambda: list(DEFAULT_CS))
    class_weight: Literal["balanced"] | None = None

    @field_validator("Cs")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(not (c > 0 and math.isfinite(c)) for c in value):
            raise ValueError("every C must be positive and finite")
        return value


class RetrievalConfig(_Strict):
    """How retrieval tasks are ranked (heads.retrieval.retrieve): post-processing (the factors)
    -> DBA -> rank -> QE / alpha-QE -> re-rank; pooling ``windows`` is spatial search."""

    metric: Literal["cosine", "l2"] = "cosine"
    # a factor (neighbours added to a query): its default is the factor table's
    qe: list[NonNegativeInt] = Field(default_factory=lambda: [get_factor("qe").default])
    dba: NonNegativeInt = 0  # database-side augmentation: neighbours per database vector, itself included (0 = off)
    alpha: PositiveFloat | None = None  # None: plain means (AQE, DBA); a number: alpha-QE / alpha-DBA weights
    whiten_on: str | None = None  # a task whose database features fit the PCA (e.g. paris6k for oxford5k)
    # share of the queries (seeded draw) held out to choose Deep Optimal; the rest are reported
    selection_queries: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _spatial_search(cls, value: Any) -> Any:
        if isinstance(value, dict) and "spatial_search" in value:
            raise ValueError("spatial_search is not a key: spatial search is the pooling 'windows' "
                             "(factors: {pooling: [avg, windows]})")
        return value


class FinetuneConfig(_Strict):
    epochs: PositiveInt = 3
    blocks: NonNegativeInt | None = None
    lr: PositiveFloat = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: PositiveInt = 32
    input_size: Annotated[int, Field(ge=16)] | None = None


class FactorsConfig(_Strict):
    """Values to try for each post-learning factor; the first value is the standard one.

    The fields are not written here: ``_factors_model`` makes one per factor of the
    ``factors`` block in results.factors' table (its config key, default and value check),
    and rebuilds the model when a factor is registered.
    """

    if TYPE_CHECKING:
        def __getattr__(self, key: str) -> list[Any]: ...

    def values_of(self, factor: str) -> list[Any]:
        """The listed values of a factor, by its name in the table (``pca``, not ``pca_dims``)."""
        key = get_factor(factor).config_key
        return list(getattr(self, key or factor))

    @model_validator(mode="after")
    def _non_empty(self) -> FactorsConfig:
        for name in type(self).model_fields:
            if not getattr(self, name):
                raise ValueError(f"factor {name} needs at least one value")
        return self


def _factor_field(factor: Factor) -> tuple[Any, Any]:
    """(annotation, field) of one factor's list of values: the table's type, check, default."""
    name = factor.name

    def check(values: list[Any]) -> list[Any]:
        for value in values:
            get_factor(name).validate(value)  # the live entry: a check attached later applies
        return values

    default = factor.default
    return (Annotated[list[factor.value_type], AfterValidator(check)],  # type: ignore[name-defined]
            Field(default_factory=lambda: [default]))


def _factors_model() -> type[FactorsConfig]:
    fields: dict[str, Any] = {f.config_key or f.name: _factor_field(f) for f in config_factors("factors")}
    return create_model("Factors", __base__=FactorsConfig, **fields)


def _check_pooling(name: Any) -> None:
    """Pooling names are features.pooling's registry (a layer above results.factors)."""
    from transferlab.features.pooling import validate_pooling

    validate_pooling(name)


attach_check("pooling", _check_pooling)


class Execution(_Strict):
    batch_size: PositiveInt | None = None  # None: features.speed.default_batch_size (6 CPU, 32 GPU)
    device: str = "auto"
    seed: NonNegativeInt = 0
    on_bad_image: Literal["error", "skip"] = "error"
    jpeg_draft: bool = False  # reduced-scale JPEG decoding (features.images.read_image)
    compile: bool = False  # torch.compile the forward pass (features.extract.CompiledForward)
    repeats: int = Field(default=1, ge=1, le=50)  # seeded splits of tasks without one fixed split
    resolution: int | None = Field(default=None, ge=16)  # input px instead of each source's native size


class StudyConfig(_Strict):
    name: str = "study"
    description: str = ""
    sources: list[SourceEntry]
    tasks: list[TaskEntry]
    data_root: str | None = None
    quick: bool = False
    sweep: Literal["one_at_a_time", "grid"] = "one_at_a_time"
    optimal: bool = True  # also evaluate the combination of each factor's best value
    factors: FactorsConfig = Field(default_factory=FactorsConfig)  # the table's model: _use_factor_table
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    train: list[TrainEntry] = Field(default_factory=list)
    distance: Literal["paper", "source_prediction"] = "paper"
    execution: Execution = Field(default_factory=Execution)

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"spec": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _some(self) -> StudyConfig:
        if not self.sources and not self.train:
            raise ValueError("sources: name at least one source (or a train: entry)")
        if not self.tasks:
            raise ValueError("tasks: name at least one task")
        return self

    def config_hash(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def evaluation_hash(self, kind: str, finetune: str = "off") -> str:
        """Hash of every setting that shapes a result besides the factor values, the source and
        the task: the probe (loss, C grid, class weight) or the retrieval settings (metric, DBA,
        alpha, whitening set, query split; QE is a factor), the fine-tuning settings
        when the job fine-tunes, the seed, and the evaluation protocol's version."""
        parts: dict[str, Any] = {"protocol": EVALUATION_PROTOCOL, "seed": self.execution.seed}
        if kind == "retrieval":
            parts["retrieval"] = self.retrieval.model_dump(mode="json", exclude={"qe"})
        else:
            parts["probe"] = self.probe.model_dump(mode="json")
        if finetune == "on":
            parts["finetune"] = self.finetune.model_dump(mode="json")
        text = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def task_root(self, task: TaskEntry) -> str | None:
        if task.root:
            return task.root
        if self.data_root:
            return str(Path(self.data_root) / task.name)
        return None


def _use_factor_table() -> None:
    """Give StudyConfig.factors the model of the current factor table (at import and after
    every registration, so a factor registered by a plugin is a config key at once)."""
    model = _factors_model()
    StudyConfig.__pydantic_fields__["factors"] = FieldInfo.from_annotated_attribute(model, Field(default_factory=model))
    StudyConfig.model_rebuild(force=True)


_use_factor_table()
on_change(_use_factor_table)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> StudyConfig:
    if not isinstance(data, dict):
        raise TransferlabError(f"{source}: a study config must be a YAML mapping")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise TransferlabError("invalid study config\n" + _format_errors(exc, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (plain
    YAML silently keeps the last one, so a repeated ``factors:`` would drop the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the constructor below reports it
                if first is not None:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file as UTF-8 with duplicate-key detection; every problem is a
    TransferlabError naming ``file:line``."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TransferlabError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                               "save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as exc:
        raise TransferlabError(f"{path}:{exc.line}: key {exc.key!r} is given twice (first at line {exc.first}); "
                               "keep one") from None


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"study config {path} does not exist")
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise TransferlabError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_config(data, str(path))
