"""The study factors: one table from which the config schema, the job setting, the stored
rows' factor keys, the report's titles and every reading order derive.

A factor is one registered :class:`Factor`. The built-in ones are registered below, in
reading order (learning factors first, then post-learning ones, as in the paper); adding a
factor is one ``register_factor(Factor(...))`` call, and registering a name twice is an error
naming both registrants. ``study.config`` builds the YAML ``factors:`` block from the table,
``study.plan`` the job setting, ``results.store`` the CSV columns and ``report`` its titles
and orders. (This module sits below both study and report, so each reads it without
importing the other.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from transferlab.errors import TransferlabError

FactorKind = Literal["learning", "post-learning", "descriptive"]
JobKind = Literal["probe", "retrieval"]
JOB_KINDS: tuple[JobKind, ...] = ("probe", "retrieval")


@dataclass(frozen=True)
class Factor:
    """One study factor and everything the layers above need to know about it.

    ``config_key`` is the factor's list of values in the study config (``block`` names the
    YAML section, ``factors`` unless another section owns it); a factor without one is
    recorded by other code (learning factors come from ``train:`` entries). ``varies_for``
    names the job kinds that sweep it (the others hold ``default``), ``recorded_for`` those
    whose rows carry it. ``values`` (or ``check``, which raises ValueError with a reason)
    says which values are allowed.
    """

    name: str  # the key in a stored row's factors
    title: str  # how the report names it
    kind: FactorKind
    config_key: str | None = None
    block: str = "factors"
    default: Any = None  # the paper's Deep Standard value
    value_type: Any = str  # one value's type in the config list
    values: tuple[Any, ...] | None = None
    check: Callable[[Any], None] | None = None
    sort: Literal["ascending", "from_top"] = "ascending"  # from_top: -1, -2, ... (layers)
    representation: bool = False  # picks the features (layer, pooling), not how they are post-processed
    varies_for: tuple[JobKind, ...] = JOB_KINDS
    recorded_for: tuple[JobKind, ...] = JOB_KINDS
    registered_by: str = ""  # module that registered it (filled in by register_factor)

    def validate(self, value: Any) -> None:
        """Raise ValueError naming the value when it is not one this factor takes."""
        if self.values is not None and value not in self.values:
            raise ValueError(f"unknown {self.name} {value!r}; choose from {', '.join(map(str, self.values))}")
        if self.check is not None:
            try:
                self.check(value)
            except TransferlabError as exc:
                raise ValueError(str(exc)) from None

    @property
    def in_setting(self) -> bool:
        """Set per job by the study (a post-learning factor with a config key)."""
        return self.kind == "post-learning" and self.config_key is not None


_FACTORS: dict[str, Factor] = {}
_LISTENERS: list[Callable[[], None]] = []


def register_factor(factor: Factor, *, registered_by: str | None = None) -> Factor:
    """Add a factor at the end of the reading order. A name (or a config key in one block)
    is registered once; a second registration is a TransferlabError naming both."""
    who = registered_by or sys._getframe(1).f_globals.get("__name__", "?")
    factor = replace(factor, registered_by=who)
    first = _FACTORS.get(factor.name)
    if first is not None:
        raise TransferlabError(f"factor {factor.name!r} is registered twice: by {first.registered_by} "
                               f"({first.title!r}) and by {who} ({factor.title!r})")
    if factor.config_key is not None:
        for other in _FACTORS.values():
            if (other.block, other.config_key) == (factor.block, factor.config_key):
                raise TransferlabError(f"config key {factor.block}.{factor.config_key} is registered twice: for "
                                       f"factor {other.name!r} by {other.registered_by} "
                                       f"and for {factor.name!r} by {who}")
    if factor.default is not None and factor.in_setting:
        factor.validate(factor.default)
    _FACTORS[factor.name] = factor
    _changed()
    return factor


def unregister_factor(name: str) -> None:
    """Remove a factor registered outside this module (a plugin's, a test's)."""
    factor = get_factor(name)
    if factor.registered_by == __name__:
        raise TransferlabError(f"factor {name!r} is built in and cannot be unregistered")
    del _FACTORS[name]
    _changed()


def attach_check(name: str, check: Callable[[Any], None]) -> None:
    """Give a factor the check of a vocabulary owned by a higher layer (pooling names live
    in features.pooling, above this package): called once by that layer's consumer."""
    factor = get_factor(name)
    same = factor.check is not None and (factor.check.__module__, factor.check.__qualname__) == (
        check.__module__, check.__qualname__)  # the same function again (a module re-imported)
    if factor.check is not None and not same:
        raise TransferlabError(f"factor {name!r} already has a value check ({factor.check.__qualname__})")
    _FACTORS[name] = replace(factor, check=check)
    _changed()


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every registration (study.config rebuilds its schema)."""
    _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()


def get_factor(name: str) -> Factor:
    try:
        return _FACTORS[name]
    except KeyError:
        raise TransferlabError(f"unknown factor {name!r}; registered: {', '.join(_FACTORS)}") from None


def all_factors() -> list[Factor]:
    """Every factor in reading order."""
    return list(_FACTORS.values())


def factors_of_kind(kind: FactorKind) -> list[Factor]:
    return [f for f in _FACTORS.values() if f.kind == kind]


def setting_factors() -> list[Factor]:
    """The factors of one job's setting, in reading order."""
    return [f for f in _FACTORS.values() if f.in_setting]


def config_factors(block: str = "factors") -> list[Factor]:
    """The factors whose values a study config lists in ``block``."""
    return [f for f in setting_factors() if f.block == block]


def factor_order() -> tuple[str, ...]:
    return tuple(_FACTORS)


def ordered_factors(names: Iterable[str]) -> list[str]:
    """Factor names in reading order, then unregistered ones alphabetically (CSV columns,
    report rows and tables follow it)."""
    names = set(names)
    return [n for n in _FACTORS if n in names] + sorted(names - set(_FACTORS))


def factor_title(name: str) -> str:
    """The report's name for a factor (the key itself when it is not registered)."""
    factor = _FACTORS.get(name)
    return factor.title if factor is not None else name


def descriptive_factors() -> frozenset[str]:
    """Keys that describe a row without being factors (see the descriptive entries below)."""
    return frozenset(f.name for f in factors_of_kind("descriptive"))


def learning_factors() -> tuple[str, ...]:
    return tuple(f.name for f in factors_of_kind("learning"))


def sorts_from_top(name: str) -> bool:
    factor = _FACTORS.get(name)
    return factor is not None and factor.sort == "from_top"


# ------------------------------------------------------------------ normalisations

# Each normalisation's chain of post-processing steps (features.postprocess names), in the
# paper's order L2 -> PCA (or PCA-whitening) -> power -> L2: (without PCA, with PCA), "pca"
# marking where the PCA step goes. The normalisation factor's values are these names.
NORMALISATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "none": ((), ("l2", "pca")),
    "l2": (("l2",), ("l2", "pca", "l2")),
    "power": (("power", "l2"), ("l2", "pca", "power", "l2")),
    "l2+power": (("l2", "power", "l2"), ("l2", "pca", "power", "l2")),
}


def postprocess_spec(normalisation: str, pca_step: str = "") -> str:
    """The post-processing spec (``l2,pca128,power,l2``) of a normalisation, with ``pca_step``
    (``pca128``, ``pcaw128``; empty: no PCA) in its place; ``none`` when nothing is done."""
    try:
        plain, with_pca = NORMALISATIONS[normalisation]
    except KeyError:
        raise TransferlabError(f"unknown normalisation {normalisation!r}; choose from "
                               f"{', '.join(NORMALISATIONS)}") from None
    steps = [pca_step if s == "pca" else s for s in with_pca] if pca_step else list(plain)
    return ",".join(steps) or "none"


# ------------------------------------------------------------------ views

# The views factor's values: each is the "+"-joined image views (features.extract.VIEWS) a
# probe trains on; retrieval ranks the original view only.
VIEWS = ("orig", "orig+flip")


def extracted_views(values: Iterable[str]) -> list[str]:
    """The image views to extract for these views-factor values ("orig+flip": orig and flip), in order."""
    views: list[str] = []
    for value in values:
        views += [view for view in value.split("+") if view not in views]
    return views


def _non_negative_pca(value: Any) -> None:
    if value < 0:
        raise ValueError("PCA dims must be >= 0 (0 = no PCA)")


# ------------------------------------------------------------------ the built-in factors
# In reading order: learning factors (decided while training the source network), then the
# post-learning ones, then keys that only describe a row.

for _factor in (
    Factor("source", "source network", "learning"),
    Factor("source_task", "source task", "learning"),
    Factor("arch", "network depth / architecture", "learning"),
    Factor("width", "network width", "learning"),
    Factor("snapshot", "early stopping (training snapshot)", "learning"),
    Factor("classes", "source diversity (number of classes)", "learning"),
    Factor("images_per_class", "source density (images per class)", "learning"),
    Factor("layer", "representation layer", "post-learning", config_key="layers", default=-1,
           value_type=int | str, sort="from_top", representation=True),
    # the layer's module name, beside the index it was asked by
    Factor("layer_name", "layer name", "descriptive"),
    # pooling names are features.pooling's registry; study.config attaches its check
    Factor("pooling", "spatial pooling", "post-learning", config_key="pooling", default="avg", representation=True),
    Factor("normalisation", "normalisation", "post-learning", config_key="normalisation", default="l2",
           values=tuple(NORMALISATIONS)),
    Factor("pca", "dimensionality reduction (PCA)", "post-learning", config_key="pca_dims", default=0,
           value_type=int, check=_non_negative_pca),
    Factor("views", "augmentation (views)", "post-learning", config_key="views", default="orig",
           values=VIEWS, varies_for=("probe",)),  # retrieval ranks the original view only
    Factor("finetune", "fine-tuning", "post-learning", config_key="finetune", default="off",
           values=("off", "on"), varies_for=("probe",)),
    # retrieval.qe's values are checked by study.config's RetrievalConfig
    Factor("qe", "query expansion (retrieval)", "post-learning", config_key="qe", block="retrieval", default=0,
           value_type=int, varies_for=("retrieval",), recorded_for=("retrieval",)),
    Factor("head", "head", "post-learning"),
    Factor("loss", "probe loss", "post-learning"),
    # the study's role for the job: "sweep" (one-at-a-time or grid) or "optimal" (the
    # combined best-per-factor setting evaluated afterwards)
    Factor("sweep", "study role", "descriptive"),
):
    register_factor(_factor)
del _factor
