"""The study factors have one owner, results.factors' table: the config schema, the job
setting, the stored rows' keys, the report's titles and every reading order derive from it,
and a factor registered there appears in all of them."""

from __future__ import annotations

import csv
import io
import random

import pytest

from transferlab.errors import TransferlabError
from transferlab.results.factors import (
    NORMALISATIONS,
    Factor,
    all_factors,
    config_factors,
    descriptive_factors,
    factor_order,
    factor_title,
    get_factor,
    learning_factors,
    ordered_factors,
    register_factor,
    setting_factors,
    unregister_factor,
)
from transferlab.study.config import StudyConfig, load_config, parse_config
from transferlab.study.plan import Job, Setting, factor_names, settings_for

MINIMAL = {"sources": ["efficientnet_lite0"], "tasks": ["digits"]}


def _config_keys() -> set[str]:
    return set(StudyConfig.model_fields["factors"].annotation.model_fields)  # type: ignore[union-attr]


def test_config_keys_and_defaults_come_from_the_table():
    assert _config_keys() == {f.config_key for f in config_factors("factors")}
    config = parse_config(MINIMAL)
    for factor in config_factors("factors"):
        assert config.factors.values_of(factor.name) == [factor.default], factor.name
    for factor in setting_factors():  # a factor of another block (retrieval.qe) too
        block = getattr(config, factor.block)
        assert getattr(block, factor.config_key) == [factor.default], factor.name


def test_setting_and_job_factors_come_from_the_table():
    setting = Setting()
    assert set(setting.as_dict()) == {f.name for f in setting_factors()} == set(factor_names())
    assert setting.as_dict() == {f.name: f.default for f in setting_factors()}
    (standard, is_standard), = settings_for(parse_config(MINIMAL), retrieval=False)
    assert is_standard and standard == setting
    for kind in ("probe", "retrieval"):
        recorded = {f.name for f in setting_factors() if kind in f.recorded_for}
        assert set(Job("s", "t", setting, kind).factors()) == recorded | {"sweep"}
    with pytest.raises(TransferlabError, match="unknown factor 'colour' in a setting"):
        Setting(colour="red")


def test_titles_order_and_kinds_come_from_the_table():
    from transferlab.report.tables import config_of, value_order

    for factor in all_factors():
        assert factor_title(factor.name) == factor.title
    assert factor_title("not_a_factor") == "not_a_factor"
    names = list(factor_order())
    shuffled = names + ["zeta", "alpha"]
    random.Random(0).shuffle(shuffled)
    assert ordered_factors(shuffled) == names + ["alpha", "zeta"]
    assert descriptive_factors() == {f.name for f in all_factors() if f.kind == "descriptive"} >= {"layer_name"}
    assert set(learning_factors()) == {f.name for f in all_factors() if f.kind == "learning"} >= {"source", "width"}
    row = {"source": "s", "factors": {name: 1 for name in names if name != "source"}}
    assert set(config_of(row)) == set(names) - descriptive_factors()
    assert value_order("layer", [-3, -1, -2]) == [-1, -2, -3]  # the table sorts layers from the top
    assert value_order("pca", [128, 0, 64]) == [0, 64, 128]


def test_csv_columns_follow_the_table(tmp_path):
    from transferlab.results.rows import ResultRow
    from transferlab.results.store import ResultStore

    names = [n for n in factor_order() if n != "source"]
    backwards = {name: 1 for name in reversed(names)}
    with ResultStore(tmp_path) as store:
        store.add(ResultRow("s", "t", backwards, "accuracy", 0.5))
        header = next(csv.reader(io.StringIO(store.to_csv())))
    assert [h.removeprefix("factor.") for h in header if h.startswith("factor.")] == names


def test_a_factor_registered_twice_is_an_error_naming_both():
    layer = get_factor("layer")
    with pytest.raises(TransferlabError, match=r"factor 'layer' is registered twice: by transferlab\.results\.factors "
                                               r"\('representation layer'\) and by .*test_factor_registry \('again'\)"):
        register_factor(Factor("layer", "again", "post-learning"))
    with pytest.raises(TransferlabError, match=r"config key factors\.pca_dims is registered twice"):
        register_factor(
            Factor("pca2", "another PCA", "post-learning", config_key="pca_dims", default=0, value_type=int)
        )
    with pytest.raises(TransferlabError, match="built in"):
        unregister_factor("layer")
    assert get_factor("layer") is layer and "pca2" not in factor_order()


def test_a_registered_factor_is_a_config_key_a_setting_factor_a_column_and_a_title(tmp_path):
    register_factor(Factor("dummy", "a dummy factor", "post-learning", config_key="dummies", default="a",
                           values=("a", "b")))
    try:
        assert "dummies" in _config_keys()
        path = tmp_path / "s.yaml"
        path.write_text("sources: [efficientnet_lite0]\ntasks: [digits]\nfactors: {dummies: [a, b]}\n")
        config = load_config(path)
        assert config.factors.dummies == ["a", "b"]
        assert parse_config(MINIMAL).factors.dummies == ["a"]  # the table's default
        settings = [s for s, _ in settings_for(config, retrieval=False)]
        assert [s.value("dummy") for s in settings] == ["a", "b"]  # standard, then one-at-a-time
        assert Job("s", "t", settings[1], "probe").factors()["dummy"] == "b"
        assert "dummy" in factor_names() and ordered_factors(["dummy", "sweep", "layer"])[-1] == "dummy"
        assert factor_title("dummy") == "a dummy factor"
        path.write_text("sources: [efficientnet_lite0]\ntasks: [digits]\nfactors: {dummies: [c]}\n")
        with pytest.raises(TransferlabError) as info:
            load_config(path)
        line = next(line for line in str(info.value).splitlines() if "dummies" in line)
        assert line.startswith(f"{path}: factors.dummies:") and "unknown dummy 'c'; choose from a, b" in line
    finally:
        unregister_factor("dummy")
    assert "dummies" not in _config_keys() and "dummy" not in factor_names()
    with pytest.raises(TransferlabError, match="factors.dummies: unknown key"):
        parse_config({**MINIMAL, "factors": {"dummies": ["a"]}})


def test_normalisations_have_one_owner():
    from transferlab.cli import build_parser
    from transferlab.features.postprocess import build_postprocess

    assert get_factor("normalisation").values == tuple(NORMALISATIONS)
    for name in NORMALISATIONS:
        assert parse_config({**MINIMAL, "factors": {"normalisation": [name]}}).factors.normalisation == [name]
        for pca in (0, 32):  # every chain is a real post-processing spec, with and without PCA
            spec = Setting(normalisation=name, pca=pca).postprocess_spec()
            assert build_postprocess(spec).spec == spec
            assert ("pca32" in spec) == bool(pca)
    with pytest.raises(TransferlabError, match="factors.normalisation: .*unknown normalisation 'l1'"):
        parse_config({**MINIMAL, "factors": {"normalisation": ["l1"]}})
    parser = build_parser()
    probe = next(a for a in parser._subparsers._group_actions[0].choices["probe"]._actions  # type: ignore[union-attr]
                 if a.dest == "norm")
    assert list(probe.choices) == list(NORMALISATIONS)
