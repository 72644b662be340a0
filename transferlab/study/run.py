"""Run a study: plan, extract once per (source, task), evaluate every pending job, store.

A killed run loses nothing finished: every result is committed as it arrives, features
are in the FeatureStore, and a rerun skips both.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.features.export import extract_task
from transferlab.features.extract import given_poolings
from transferlab.features.handle import FeatureHandle, features_of
from transferlab.features.store import FeatureStore
from transferlab.results.provenance import collect_provenance
from transferlab.results.rows import ResultRow
from transferlab.results.store import ResultStore
from transferlab.study.config import StudyConfig
from transferlab.study.evaluation import (
    best_setting,
    evaluate_probe_job,
    evaluate_retrieval_job,
    repeat_split,
)
from transferlab.study.executors import make_executor
from transferlab.study.plan import Job, Plan, concat_members, make_plan, settings_for


@dataclass
class RunSummary:
    run_dir: Path
    new_results: int = 0
    skipped: int = 0
    seconds: float = 0.0
    forwarded_images: int = 0
    failures: list[str] = field(default_factory=list)
    selection_notes: list[str] = field(default_factory=list)


# --------------------------------------------------------- remote-safe work units
def extract_pair(specs: list[tuple[str, str | None]], task: TaskData, layers: list, poolings: list[str],
                 views: list[str], store_root: str | None, execution: dict,
                 members: list | None = None) -> tuple[FeatureHandle, int, dict | None]:
    """Forward every image of ``task`` once per source member and view; all layers/poolings.
    Also measures the task's distance from the source by the source's own predictions.
    ``members``: the networks of ``specs`` loaded already (the plan's); loaded here otherwise."""
    from transferlab.sources.concat import load_members

    if members is None:
        members = [load_members(spec, weights, execution.get("resolution"))[0] for spec, weights in specs]
    store = FeatureStore(store_root) if store_root else FeatureStore()
    extracted, forwarded, distance = [], 0, None
    for source in members:
        layer_specs = [layer for layer in layers if _layer_exists(source, layer)]
        given = given_poolings(source.resolve_layers(layer_specs), poolings)  # cls only where tokens have one
        feats = extract_task(source, task, layer_specs, given, views, store=store,
                             device=execution["device"], batch_size=execution["batch_size"],
                             on_bad_image=execution["on_bad_image"], progress=execution.get("progress", True),
                             jpeg_draft=execution.get("jpeg_draft", False),
                             compile_model=execution.get("compile", False))
        forwarded += sum(s.forwarded_images for s in feats.splits.values())
        extracted.append(feats)
        if distance is None and len(members) == 1:
            distance = source_prediction(source, feats)
        source.model.cpu()  # the network stays loaded for the run's next task: not on the device
    return features_of(extracted), forwarded, distance


def source_prediction(source, feats) -> dict | None:
    """Source-classifier distance of the task (analysis.distance.source_prediction_distance),
    from the top layer's average-pooled features already extracted: the head of timm and
    torchvision ConvNets is global average pooling then linear layers, so no new forward."""
    import numpy as np
    import torch

    from transferlab.analysis.distance import source_prediction_distance

    top = next((layer for layer in feats.layers if layer.index == -1), None)
    pooling = source.head_pooling  # how the model's own head pools the top layer (cls for ViTs)
    if top is None or pooling not in feats.poolings or source.forward_head is None or source.num_classes < 2:
        return None
    split = "test" if "test" in feats.splits else next(iter(feats.splits))
    pooled = torch.from_numpy(np.array(feats.splits[split].get(top, pooling), dtype=np.float32))
    with torch.inference_mode():
        source.model.cpu()
        logits = source.logits_from_vector(pooled)
    probs = torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
    result = source_prediction_distance(probs)
    return {"source": source.name, "split": split, **{k: float(v) for k, v in result.items()}}


def _layer_exists(source, layer) -> bool:
    try:
        source.resolve_layers([layer])
        return True
    except TransferlabError:
        return False


def evaluate_jobs(jobs: list[Job], task: TaskData, features: FeatureHandle, config: StudyConfig,
                  metric: str, whiten: FeatureHandle | None = None) -> list[ResultRow | str]:
    """Evaluate jobs sharing one (source, task); a failing job becomes an error string.
    ``whiten``: features of a held-out task whose database fits the retrieval PCA."""
    out: list[ResultRow | str] = []
    resplits: dict[int, tuple] = {}
    base_task, base_features = task, features
    for job in jobs:
        try:
            task, features = base_task, base_features
            if job.split:  # execution.repeats: the next partition, or a seeded re-deal of the same features
                if job.split not in resplits:
                    resplits[job.split] = repeat_split(base_task, base_features, job.split, config.execution.seed)
                task, features = resplits[job.split]
            if job.kind == "retrieval":
                held_out = None if whiten is None else whiten.split("db", job.setting.layer, job.setting.pooling)
                out.append(evaluate_retrieval_job(job, task, features, config.retrieval, metric, held_out,
                                                  config.execution.seed))
            else:
                out.append(evaluate_probe_job(job, task, features, config.probe, metric, config.execution.seed))
        except TransferlabError as exc:
            out.append(f"{job.source} / {job.task} / {job.setting}: {exc}")
    return out


# ------------------------------------------------------------------ orchestration
def task_meta(plan: Plan) -> dict[str, dict]:
    from transferlab.evaluate import PROTOCOLS

    return {
        name: {"distance": spec.distance, "group": spec.group, "group_name": spec.group_name,
               "metric": spec.metric, "kind": spec.kind, "title": spec.title,
               "protocol": spec.protocol or PROTOCOLS.get(spec.metric, "")}
        for name, spec in plan.specs.items()
    }


def run_study(config: StudyConfig, run_dir: str | Path, *, executor: str = "local", address: str | None = None,
              cache: str | None = None, progress: bool = True) -> RunSummary:
    run_dir = Path(run_dir)
    started = time.perf_counter()
    plan = make_plan(config)
    if plan.to_train:
        from transferlab.study.learning import train_all

        train_all(config, config.execution.device, progress)
        plan = make_plan(config, loaded=plan.members)  # now the trained sources load and their layers are checked
    provenance = collect_provenance(config.config_hash(), config.execution.seed, config.execution.device)
    results = ResultStore(run_dir, provenance=provenance)
    summary = RunSummary(run_dir)
    with results.lock():
        results.set_meta("name", config.name)
        results.set_meta("config", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        results.set_meta("tasks", task_meta(plan))
        results.set_meta("sources", list(plan.sources))
        if plan.learning:  # trained sources' own records (val accuracy, images, classes) for the report
            from transferlab.study.learning import source_records, warn_near_chance

            results.set_meta("trained_sources", warn_near_chance(source_records(plan.config)))
        results.set_meta("standard", settings_for(config, False)[0][0].as_dict())
        results.set_meta("distance", config.distance)
        distances = results.get_meta("distances", {}) or {}
        for name, spec in plan.specs.items():
            distances.setdefault(name, {})["paper"] = spec.distance
        results.set_meta("distances", distances)
        done = results.done_keys()
        # the rows `report` and `results` show: this configuration's (old rows stay, apart)
        current = plan.current_keys()
        results.set_meta("current_keys", current)
        results.set_meta("current_identity", config.config_hash())
        pool = make_executor(executor, address)
        execution = {**config.execution.model_dump(), "progress": progress}
        memo: dict[tuple, FeatureHandle] = {}  # features shared by several pairs (whitening sets)
        try:
            pool.extract_ahead(extract_pair, _extractions_needed(plan, done, cache, execution))
            for source_name, task_name in plan.pairs():
                jobs = [j for j in plan.jobs_for(source_name, task_name) if j.key not in done]
                optimal_wanted = config.optimal and config.sweep == "one_at_a_time"
                if not jobs and not optimal_wanted:
                    summary.skipped += len(plan.jobs_for(source_name, task_name))
                    continue
                summary.skipped += len(plan.jobs_for(source_name, task_name)) - len(jobs)
                _run_pair(plan, pool, results, summary, source_name, task_name, jobs, execution, cache,
                          optimal_wanted, done, progress, memo)
        finally:
            pool.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _extractions_needed(plan: Plan, done: set[str], cache: str | None, execution: dict) -> list[tuple]:
    """``extract_pair`` arguments of every (source, task) with a pending job (and its
    retrieval whitening set), so a cluster executor can put all of them in flight at once."""
    wanted: dict[tuple, tuple] = {}
    for source_name, task_name in plan.pairs():
        if not any(j.key not in done and j.setting.finetune == "off" for j in plan.jobs_for(source_name, task_name)):
            continue
        names = [(task_name, plan.views_for(task_name))]
        if plan.specs[task_name].kind == "retrieval" and plan.config.retrieval.whiten_on:
            names.append((plan.config.retrieval.whiten_on, ["orig"]))
        for name, views in names:
            wanted.setdefault((source_name, name, tuple(views)), (
                _source_specs(plan, source_name), plan.tasks[name], plan.layers, plan.poolings, views, cache,
                execution, plan.members.get(source_name)))
    return list(wanted.values())


def _source_specs(plan: Plan, source_name: str) -> list[tuple[str, str | None]]:
    entry = plan.sources[source_name]
    members = concat_members(entry.spec)
    return [(m, None) for m in members] if members else [(entry.spec, entry.weights)]


def _run_pair(plan: Plan, pool, results: ResultStore, summary: RunSummary, source_name: str, task_name: str,
              jobs: list[Job], execution: dict, cache: str | None, optimal_wanted: bool, done: set[str],
              progress: bool, memo: dict) -> None:
    config = plan.config
    task = plan.tasks[task_name]
    metric = plan.specs[task_name].metric
    features = None

    def ensure_features() -> FeatureHandle:
        nonlocal features
        if features is None:
            features, forwarded, distance = pool.run_extraction(
                extract_pair, _source_specs(plan, source_name), task, plan.layers, plan.poolings,
                plan.views_for(task_name), cache, execution, plan.members.get(source_name))
            summary.forwarded_images += forwarded
            if distance is not None and source_name == next(iter(plan.sources)):
                distances = results.get_meta("distances", {}) or {}
                distances.setdefault(task_name, {"paper": plan.specs[task_name].distance})
                distances[task_name]["source_prediction"] = distance["distance"]
                distances[task_name]["source_prediction_detail"] = distance
                results.set_meta("distances", distances)
        return features

    def whitening() -> FeatureHandle | None:
        """The held-out whitening set's features: only when a job needs them, once per source."""
        if plan.specs[task_name].kind != "retrieval" or not config.retrieval.whiten_on:
            return None
        key = ("whiten", source_name)
        if key not in memo:
            memo[key] = _whitening_features(plan, pool, source_name, cache, execution)
        return memo[key]

    tuned_features = None

    def ensure_tuned() -> FeatureHandle:
        nonlocal tuned_features
        if tuned_features is None:
            tuned_features = _finetuned_features(plan, pool, results, source_name, task_name, execution, cache)
        return tuned_features

    plain = [j for j in jobs if j.setting.finetune == "off"]
    tuned = [j for j in jobs if j.setting.finetune == "on"]
    if plain:
        _evaluate(pool, results, summary, plain, task, ensure_features(), config, metric, whitening(), progress)
    if tuned:
        _evaluate(pool, results, summary, tuned, task, ensure_tuned(), config, metric, whitening(), progress)
    if optimal_wanted:
        wanted = {j.key for j in plan.jobs_for(source_name, task_name)}
        rows = [r for r in results.rows(task_name) if r["source"] == source_name and r["job_key"] in wanted]
        standard = settings_for(config, plan.specs[task_name].kind == "retrieval")[0][0]
        splits = sorted({j.split for j in plan.jobs_for(source_name, task_name)})
        for split in splits:
            split_rows = [r for r in rows if (r["extra"] or {}).get("split", 0) == split]
            best = best_setting(split_rows, standard, metric)
            job = plan.make_job(source_name, task_name, best, optimal=True, split=split)
            evaluated = {j.setting for j in plan.jobs_for(source_name, task_name)}
            if best in evaluated:
                continue  # the best combination is one the sweep already measured
            _add_current(results, job.key)
            if job.key in done:
                continue
            feats = ensure_tuned() if best.finetune == "on" else ensure_features()
            _evaluate(pool, results, summary, [job], task, feats, config, metric, whitening(), progress)


def _add_current(results: ResultStore, key: str) -> None:
    current = results.get_meta("current_keys", []) or []
    if key not in current:
        results.set_meta("current_keys", [*current, key])


def _evaluate(pool, results, summary, jobs, task, features, config, metric, whiten, progress) -> None:
    from tqdm.auto import tqdm

    # one call per (layer, pooling, views): features are loaded once for its jobs
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.setting.layer, job.setting.pooling, job.setting.views), []).append(job)
    calls = [(group, task, features, config, metric, whiten) for group in groups.values()]
    bar = tqdm(total=len(jobs), unit="job", desc=f"evaluating {jobs[0].source} on {task.name}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for outcome in pool.map_evaluation(evaluate_jobs, calls):
            rows = [r for r in outcome if isinstance(r, ResultRow)]
            errors = [r for r in outcome if isinstance(r, str)]
            for row in rows:  # bad input for selection: one line per task and problem
                if row.selection.startswith("none: ") and row.selection not in summary.selection_notes:
                    summary.selection_notes.append(row.selection)
                    print(f"transferlab: {row.selection[6:]}", file=sys.stderr)
            if rows:
                results.add_many(rows)
            summary.new_results += len(rows)
            summary.failures.extend(errors)
            for error in errors:
                print(f"transferlab: job failed: {error}", file=sys.stderr)
            bar.update(len(outcome))
    finally:
        bar.close()


def _whitening_features(plan: Plan, pool, source_name: str, cache, execution):
    """Database features of the held-out task named by ``retrieval.whiten_on`` (e.g. Paris
    for Oxford); the whitening of each job is fit on them with the job's layer/pooling."""
    held_out = plan.config.retrieval.whiten_on
    if held_out is None:
        raise TransferlabError("retrieval.whiten_on names no task")  # callers check it first
    feats, _, _ = pool.run_extraction(extract_pair, _source_specs(plan, source_name), plan.tasks[held_out],
                                      plan.layers, plan.poolings, ["orig"], cache, execution,
                                      plan.members.get(source_name))
    return feats


def _finetuned_features(plan: Plan, pool, results: ResultStore, source_name: str, task_name: str,
                        execution: dict, cache) -> FeatureHandle:
    """Fine-tune the source on the task once (resumable, under RUN_DIR/finetuned/), then
    extract features of the fine-tuned network."""
    from transferlab.heads.finetune import finetune
    from transferlab.sources.concat import load_members

    entry = plan.sources[source_name]
    if concat_members(entry.spec):
        raise TransferlabError(f"fine-tuning a concat source ({entry.spec}) is not supported")
    out = results.run_dir / "finetuned" / f"{_slug(source_name)}__{task_name}"
    ft = plan.config.finetune
    if not (out / "source.json").exists():
        (source,) = (plan.members.get(source_name)
                     or load_members(entry.spec, entry.weights, execution.get("resolution")))
        finetune(source, [plan.tasks[task_name]], out, blocks=ft.blocks, epochs=ft.epochs, lr=ft.lr,
                 optimizer=ft.optimizer, batch_size=ft.batch_size, input_size=ft.input_size,
                 device=execution["device"], seed=execution["seed"], progress=execution.get("progress", True))
    feats, _, _ = pool.run_extraction(extract_pair, [(f"finetuned:{out}", None)], plan.tasks[task_name],
                                      plan.layers, plan.poolings, plan.views, cache, execution)
    return feats


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
