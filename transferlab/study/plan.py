"""Planner: expand a study config into jobs, grouped so every (source, task) is forwarded
once and every layer/pooling of the config comes out of that one pass.

Everything a run needs is checked here, before any compute: task names and roots, the
tasks' annotation files, source specs, layers. All problems are reported at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from transferlab.data.base import TaskData, image_splits
from transferlab.data.tasks import TaskSpec, get_task, load_task
from transferlab.errors import TransferlabError
from transferlab.results.factors import extracted_views, postprocess_spec, setting_factors
from transferlab.results.rows import job_key_of
from transferlab.sources.concat import concat_members  # noqa: F401 - re-exported for the study modules
from transferlab.study.config import SourceEntry, StudyConfig


def factor_names() -> tuple[str, ...]:
    """The factors of a job's setting (results.factors' table, in reading order)."""
    return tuple(f.name for f in setting_factors())


class Setting:
    """One value of every post-learning factor of the table (``Setting(pca=64)``: the rest at
    their Deep Standard defaults). Immutable and hashable; the typed properties read the
    values the evaluation code uses."""

    __slots__ = ("_values",)
    _values: tuple[tuple[str, Any], ...]

    def __init__(self, **values: Any) -> None:
        factors = setting_factors()
        unknown = set(values) - {f.name for f in factors}
        if unknown:
            raise TransferlabError(f"unknown factor {sorted(unknown)[0]!r} in a setting; "
                                   f"the setting's factors are {', '.join(f.name for f in factors)}")
        object.__setattr__(self, "_values", tuple((f.name, values.get(f.name, f.default)) for f in factors))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Setting is immutable: use with_values()")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_setting, (self._values,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Setting) and _comparable(self._values) == _comparable(other._values)

    def __hash__(self) -> int:
        return hash(_comparable(self._values))

    def __repr__(self) -> str:
        return f"Setting({', '.join(f'{k}={v!r}' for k, v in self._values)})"

    def value(self, factor: str) -> Any:
        return dict(self._values)[factor]

    def with_values(self, **values: Any) -> Setting:
        return Setting(**{**self.as_dict(), **values})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def layer(self) -> int | str:
        return self.value("layer")

    @property
    def pooling(self) -> str:
        return self.value("pooling")

    @property
    def normalisation(self) -> str:
        return self.value("normalisation")

    @property
    def pca(self) -> int:
        return self.value("pca")

    @property
    def views(self) -> str:
        return self.value("views")

    @property
    def finetune(self) -> str:
        return self.value("finetune")

    @property
    def qe(self) -> int:
        return self.value("qe")

    def postprocess_spec(self, retrieval_whiten: bool = False) -> str:
        """The paper's order: L2 -> PCA (or PCA-whitening) -> power -> L2 (results.factors.NORMALISATIONS)."""
        pca = f"pca{'w' if retrieval_whiten else ''}{self.pca}" if self.pca else ""
        return postprocess_spec(self.normalisation, pca)


def _comparable(values: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    """Values as hashable keys: a factor value may be a list (JSON), compared by content."""
    return tuple((k, json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v) for k, v in values)


def _restore_setting(values: tuple[tuple[str, Any], ...]) -> Setting:
    setting = object.__new__(Setting)
    object.__setattr__(setting, "_values", values)
    return setting


@dataclass(frozen=True)
class Job:
    """Evaluate one Setting of one source on one task."""

    source: str  # SourceEntry.name
    task: str
    setting: Setting
    kind: str  # "probe" or "retrieval"
    standard: bool = False
    optimal: bool = False
    learning: tuple[tuple[str, Any], ...] = ()  # learning factors of a trained source
    identity: str = ""  # result_identity(): source weights, task data, evaluation settings, split
    split: int = 0  # 0 = the task's own split; r > 0 = the r-th seeded re-split (execution.repeats)

    @property
    def key(self) -> str:
        """The result's key: the same function the ResultStore uses (results.job_key_of)."""
        return job_key_of(self.source, self.task, self.factors(), self.identity or None)

    def factors(self) -> dict[str, Any]:
        """The stored row's factors: the setting's (those its kind records), role, learning factors."""
        recorded = {f.name for f in setting_factors() if self.kind in f.recorded_for}
        values = {k: v for k, v in self.setting.as_dict().items() if k in recorded}
        values["sweep"] = "optimal" if self.optimal else "sweep"
        values.update(dict(self.learning))
        return values


@dataclass
class Plan:
    config: StudyConfig
    sources: dict[str, SourceEntry]
    tasks: dict[str, TaskData]
    specs: dict[str, TaskSpec]
    jobs: list[Job]
    layers: list[int | str]
    poolings: list[str]
    views: list[str]
    notes: list[str] = field(default_factory=list)
    learning: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> learning factors
    to_train: int = 0  # train: networks not yet in the cache
    source_ids: dict[str, str] = field(default_factory=dict)  # source -> spec + weights identity
    task_ids: dict[str, str] = field(default_factory=dict)  # task -> name + options + data fingerprint
    # source -> its loaded member networks (sources.concat.load_members), loaded once by the plan
    # and used by the run: no source is loaded twice in one study
    members: dict[str, list[Any]] = field(default_factory=dict)

    def make_job(self, source: str, task: str, setting: Setting, *, standard: bool = False,
                 optimal: bool = False, split: int = 0) -> Job:
        """A job with its full identity (the only way jobs are made, so keys always agree)."""
        kind = "retrieval" if self.specs[task].kind == "retrieval" else "probe"
        identity = result_identity(self.source_ids.get(source, source), self.task_ids.get(task, task),
                                   self.config.evaluation_hash(kind, setting.finetune), split)
        return Job(source, task, setting, kind, standard=standard, optimal=optimal,
                   learning=tuple(sorted(self.learning.get(source, {}).items())), identity=identity, split=split)

    def current_keys(self) -> list[str]:
        return [j.key for j in self.jobs]

    def jobs_for(self, source: str, task: str) -> list[Job]:
        return [j for j in self.jobs if j.source == source and j.task == task]

    def pairs(self) -> list[tuple[str, str]]:
        seen: dict[tuple[str, str], None] = {}
        for job in self.jobs:
            seen.setdefault((job.source, job.task), None)
        return list(seen)

    def views_for(self, task: str) -> list[str]:
        """Views to forward for ``task``: retrieval ranks the original view only."""
        return ["orig"] if self.specs[task].kind == "retrieval" else self.views

    def images_per_task(self, task: str) -> int:
        return sum(len(split) for split in image_splits(self.tasks[task]).values())

    def summary(self, done: set[str] | None = None) -> dict[str, Any]:
        done = done or set()
        pending = [j for j in self.jobs if j.key not in done]
        pending_pairs = {(j.source, j.task) for j in pending}
        finetuned = {(j.source, j.task) for j in pending if j.setting.finetune == "on"}
        forwards = 0
        estimate_train = self.to_train * 60
        for source, task in pending_pairs:
            members = concat_members(self.sources[source].spec) or [source]
            forwards += len(members) * self.images_per_task(task) * len(self.views_for(task))
        for _source, task in finetuned:
            forwards += self.images_per_task(task) * len(self.views_for(task))
        probe_fits = sum(1 for j in pending if j.kind == "probe" and not j.optimal)
        retrievals = sum(1 for j in pending if j.kind == "retrieval" and not j.optimal)
        optimal = sum(1 for j in pending if j.optimal)
        estimate = forwards * 0.03 + probe_fits * 0.5 + retrievals * 0.2 + len(finetuned) * 60 + estimate_train
        return {
            "sources": list(self.sources),
            "tasks": list(self.tasks),
            "forward_groups": len(pending_pairs) + len(finetuned),
            "image_forwards": forwards,
            "probe_fits": probe_fits,
            "retrieval_evaluations": retrievals,
            "optimal_jobs": optimal,
            "finetune_runs": len(finetuned),
            "networks_to_train": self.to_train,
            "jobs_total": len(self.jobs),
            "jobs_done": len(self.jobs) - len(pending),
            "estimated_seconds_cpu": round(estimate, 1),
            "notes": self.notes,
        }


def result_identity(source_id: str, task_id: str, evaluation_hash: str, split: int = 0) -> str:
    """Hash of everything besides the factor values that made a result: the source (spec and
    weights), the task (options and data fingerprint), the evaluation settings and the split."""
    text = json.dumps([source_id, task_id, evaluation_hash, split])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def task_fingerprint(task: TaskData, options: dict[str, Any]) -> str:
    """Name, loader options, every image list (paths, sizes, mtimes) and every label."""
    from transferlab.features.store import dataset_fingerprint

    digest = hashlib.sha256(json.dumps([task.name, options], sort_keys=True, default=str).encode())
    for name, split in sorted(image_splits(task).items()):
        digest.update(f"{name}:{dataset_fingerprint(split.paths, split.boxes)}".encode())
        digest.update(split.labels.tobytes())
    for query in task.queries or []:
        for part in (query.positives, query.junk, query.easy, query.hard):
            digest.update(b"|" if part is None else part.astype("int64").tobytes())
    return f"{task.name}:{digest.hexdigest()[:16]}"


def repeatable(spec: TaskSpec) -> bool:
    """Tasks with more than one split to evaluate: re-dealt (the built-in classification
    tasks, SUN Attributes) or official alternative partitions (SUN397)."""
    return bool(spec.repeat_mode)


def settings_for(config: StudyConfig, retrieval: bool) -> list[tuple[Setting, bool]]:
    """(setting, is_standard) pairs: one-at-a-time from the standard, or the full grid."""
    kind = "retrieval" if retrieval else "probe"
    values: dict[str, list[Any]] = {}
    for factor in setting_factors():  # e.g. retrieval ranks the original view only, probes have no QE
        listed = list(getattr(getattr(config, factor.block), factor.config_key or factor.name))
        values[factor.name] = listed if kind in factor.varies_for else [factor.default]
    standard = Setting(**{name: vals[0] for name, vals in values.items()})
    if config.sweep == "grid":
        names = list(values)
        out = [Setting(**dict(zip(names, combo, strict=True))) for combo in itertools.product(*values.values())]
    else:
        out = [standard]
        for name, vals in values.items():
            out.extend(standard.with_values(**{name: v}) for v in vals[1:])
    unique = list(dict.fromkeys(out))
    return [(s, s == standard) for s in unique]


def make_plan(config: StudyConfig, check_layers: bool = True, loaded: dict[str, list[Any]] | None = None) -> Plan:
    """Validate everything and expand the jobs. Sources of ``train:`` entries that are not
    trained yet are planned without being loaded (their layers are checked after training).
    ``loaded``: members an earlier plan of the same run loaded (``Plan.members``), reused."""
    from transferlab.study.learning import (
        concat_factors,
        is_trained,
        learning_settings,
        references_of,
        resolve_train_references,
        trained_entries,
    )

    config = resolve_train_references(config)  # train:NAME in source specs -> trained:DIR@EPOCH
    problems: list[str] = []
    notes: list[str] = []
    tasks: dict[str, TaskData] = {}
    specs: dict[str, TaskSpec] = {}
    task_ids: dict[str, str] = {}
    source_ids: dict[str, str] = {}
    members: dict[str, list[Any]] = dict(loaded or {})
    networks: dict[tuple, Any] = {}  # one load per network, also when a concat shares a member
    for task_entry in config.tasks:
        try:
            spec = get_task(task_entry.name)
        except TransferlabError as exc:
            problems.append(f"tasks.{task_entry.name}: {exc}")
            continue
        specs[task_entry.name] = spec
        root = config.task_root(task_entry)
        options = dict(task_entry.options)
        if spec.builtin and config.quick:
            options.setdefault("quick", True)
        if spec.repeat_mode == "partitions" and config.execution.repeats > 1:
            options.setdefault("extra_partitions", config.execution.repeats - 1)
        if not spec.builtin and root is None:
            problems.append(f"tasks.{task_entry.name}: needs a root "
                            f"(tasks: [{{name: {task_entry.name}, root: DIR}}] or data_root)")
            continue
        try:
            tasks[task_entry.name] = load_task(task_entry.name, root, **options)
            task_ids[task_entry.name] = task_fingerprint(tasks[task_entry.name], options)
        except TransferlabError as exc:
            if spec.builtin and root is None:  # e.g. dataset-fashion-mnist not installed
                notes.append(f"skipped built-in task {task_entry.name}: {exc}")
                print(f"transferlab: skipping built-in task {task_entry.name}: {exc}", file=sys.stderr)
                del specs[task_entry.name]
                continue
            problems.append(f"tasks.{task_entry.name}: {exc}")
    if config.retrieval.whiten_on and config.retrieval.whiten_on not in specs:
        problems.append(f"retrieval.whiten_on: {config.retrieval.whiten_on} must also be listed under tasks")

    sources: dict[str, SourceEntry] = {}
    usable: dict[str, dict[str, frozenset[str]]] = {}  # source -> layer spec -> poolings it gives
    unpoolable: dict[str, list[str]] = {}  # pooling -> why each source's layers cannot give it
    learning: dict[str, dict[str, Any]] = {}
    untrained = [t for t in config.train if not is_trained(t)]
    trained = trained_entries(config)
    for entry, factors, train_entry in trained:
        learning[entry.name] = factors
        if train_entry in untrained:
            sources[entry.name] = entry
            source_ids[entry.name] = f"{entry.spec} (to be trained)"
            usable[entry.name] = {str(layer): frozenset(config.factors.pooling) for layer in config.factors.layers}
    finetuned = {e.name for e, f, t in trained if t.finetune and f["snapshot"] == t.epochs}
    for entry in config.sources:  # Concat of trained networks: a learning-factor source too
        concat = concat_factors(entry.spec, config)
        if concat is not None:
            learning[entry.name] = concat
    for entry in [*config.sources, *(e for e, _, t in trained if t not in untrained)]:
        if entry.name in sources:
            problems.append(f"sources: {entry.name} is listed twice")
            continue
        if any(t in untrained for t, _ in references_of(entry.spec, config)):
            sources[entry.name] = entry  # reads networks not trained yet: checked after training
            source_ids[entry.name] = f"{entry.spec} (to be trained)"
            usable[entry.name] = {str(layer): frozenset(config.factors.pooling) for layer in config.factors.layers}
            continue
        sources[entry.name] = entry
        found, source_problems, why_not, weights_ids = _check_source(entry, config, check_layers, members, networks)
        source_ids[entry.name] = json.dumps([entry.spec, entry.weights, weights_ids, config.execution.resolution])
        problems.extend(source_problems)
        usable[entry.name] = found
        for p, reason in why_not.items():
            unpoolable.setdefault(p, []).append(reason)
            notes.append(f"source {entry.name}: {reason}: those settings are skipped for it")
        missing = [str(layer) for layer in config.factors.layers if str(layer) not in found]
        if check_layers and found and missing and len(missing) < len(config.factors.layers):
            notes.append(f"source {entry.name} has no layer {', '.join(missing)}: those settings are skipped for it")

    if check_layers and usable:
        for p in config.factors.pooling:  # a pooling no source can give is a mistake, not a sweep
            if p in unpoolable and not any(p in given for found in usable.values() for given in found.values()):
                problems.append(f"factors.pooling: {'; '.join(dict.fromkeys(unpoolable[p]))}")
        for layer in config.factors.layers:
            if usable and all(str(layer) not in found for found in usable.values() if found):
                problems.append(f"factors.layers: layer {layer} exists in none of the sources")
    jobs: list[Job] = []
    plan = Plan(config, sources, tasks, specs, jobs, list(config.factors.layers), list(config.factors.pooling),
                ["orig"], notes, learning, len(untrained), source_ids, task_ids, members)
    for source_name in sources:
        for task_name, spec in specs.items():
            if task_name not in tasks:
                continue
            retrieval = spec.kind == "retrieval"
            # the first listed source is the standard one, a Concat of trained networks too (learning.yaml)
            standard_source = source_name == (config.sources[0].name if config.sources else None)
            settings = settings_for(config, retrieval)
            if source_name in learning:  # learning-factor sources are compared at the standard setting
                settings = learning_settings(settings, source_name in finetuned)
            for setting, is_standard in settings:
                if setting.pooling == "windows" and (not retrieval or setting.qe):
                    continue  # spatial search: retrieval only, and QE expands one descriptor per image
                given = usable[source_name].get(str(setting.layer))
                if check_layers and (given is None or setting.pooling not in given):
                    continue  # layer absent from this source, or a pooling it cannot give (grid2 on fc7)
                splits = range(config.execution.repeats) if repeatable(spec) else range(1)
                for split in splits:
                    jobs.append(plan.make_job(source_name, task_name, setting, split=split,
                                              standard=is_standard and standard_source))
    if "windows" in config.factors.pooling:
        notes.append("pooling 'windows' (spatial search) is evaluated on retrieval tasks only"
                     + (", without DBA or QE" if config.retrieval.dba or any(config.retrieval.qe) else ""))
    if not tasks and not problems:
        problems.append("tasks: none of the tasks could be loaded")
    if problems:
        raise TransferlabError("the study cannot start:\n  " + "\n  ".join(problems))
    views = extracted_views(config.factors.views)
    if untrained:
        notes.append(f"{len(untrained)} source network(s) of train: will be trained first")
    # the first listed source is the standard one, trained sources come after the others
    order = [e.name for e in config.sources] + [e.name for e, _, _ in trained]
    plan.sources = {name: sources[name] for name in order if name in sources}
    plan.views = views
    return plan


def _check_source(entry: SourceEntry, config: StudyConfig, check_layers: bool, loaded: dict[str, list[Any]],
                  networks: dict[tuple, Any]) -> tuple[dict[str, frozenset[str]], list[str], dict[str, str], list[str]]:
    """Load the source's members (once per run: kept in ``loaded`` under the source's name);
    return {layer spec: the config's poolings it gives} usable by every member, problems, for
    each pooling none of its layers gives why (naming the layer and the pooling: ``cls`` on
    Swin's maps), and the members' weights ids."""
    from transferlab.features.pooling import check_pooling, poolings_for
    from transferlab.sources.concat import load_members

    problems: list[str] = []
    why_not: dict[str, str] = {}
    found: dict[str, frozenset[str]] | None = None
    weights_ids: list[str] = []
    if entry.name not in loaded:
        try:
            loaded[entry.name] = load_members(entry.spec, entry.weights, config.execution.resolution, networks)
        except TransferlabError as exc:
            return {}, [f"sources.{entry.name}: {exc}"], why_not, weights_ids
    specs = concat_members(entry.spec) or [entry.spec]
    for spec, source in zip(specs, loaded[entry.name], strict=True):
        weights_ids.append(str(source.weights_id))
        if not check_layers:
            continue
        layers: dict[str, frozenset[str]] = {}
        resolved_layers = []
        for layer in config.factors.layers:
            try:
                (resolved,) = source.resolve_layers([layer])
            except TransferlabError:
                continue
            layers[str(layer)] = frozenset(poolings_for(resolved, config.factors.pooling))
            resolved_layers.append(resolved)
        for p in config.factors.pooling:
            if resolved_layers and not any(p in given for given in layers.values()):
                try:
                    check_pooling(resolved_layers[0], p, spec)
                except TransferlabError as exc:
                    why_not.setdefault(p, str(exc))
        if not layers:
            problems.append(f"sources.{entry.name}: none of the layers {config.factors.layers} exists in {spec} "
                            f"(it has {', '.join(str(layer.index) for layer in source.layers)})")
        found = layers if found is None else {k: v & layers[k] for k, v in found.items() if k in layers}
    return found or {}, problems, why_not, weights_ids
