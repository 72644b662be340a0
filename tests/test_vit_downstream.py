"""Everything downstream of a vision-transformer source: a study, probe, retrieve with spatial
search, select and fine-tuning of its top blocks or of the whole network.

DeiT-tiny (random init) at 32 px (a 2x2 patch grid + the class token) keeps them fast; the
forward passes are real all the same.
"""

from __future__ import annotations

import json

import pytest
import torch

from transferlab.cli import main
from transferlab.errors import TransferlabError

DEIT = ["--source", "timm:deit_tiny_patch16_224", "--weights", "none", "--resolution", "32"]


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_study_with_a_vit_source_runs_end_to_end(tmp_path):
    from transferlab.results.store import ResultStore
    from transferlab.study.config import parse_config
    from transferlab.study.plan import make_plan
    from transferlab.study.run import run_study

    config = parse_config({
        "name": "vit", "quick": True,
        "sources": [{"spec": "timm:deit_tiny_patch16_224", "weights": "none"},
                    {"spec": "timm:mobilenetv3_small_050", "weights": "none"}],
        "tasks": ["digits", "photo_copies"],
        "factors": {"layers": [-1, -2], "pooling": ["cls", "avg", "cls+avg", "grid2"], "pca_dims": [0, 16]},
        "probe": {"Cs": [0.1, 1.0]},
        "execution": {"batch_size": 64, "resolution": 32},
    })
    plan = make_plan(config)
    assert any("cannot give pooling 'cls'" in note and "mobilenetv3" in note for note in plan.notes)
    summary = run_study(config, tmp_path / "run", cache=str(tmp_path / "store"), progress=False)
    assert summary.failures == []
    rows = ResultStore(tmp_path / "run").rows()
    vit = [r for r in rows if r["source"] == "timm:deit_tiny_patch16_224"]
    convnet = [r for r in rows if r["source"] == "timm:mobilenetv3_small_050"]
    assert {r["factors"]["pooling"] for r in vit} == {"cls", "avg", "cls+avg", "grid2"}
    assert {r["factors"]["pooling"] for r in convnet} == {"avg", "grid2"}  # no class token there
    assert {r["task"] for r in vit} == {"digits", "photo_copies"}
    digits = [r for r in vit if r["task"] == "digits"]
    assert max(r["value"] for r in digits) > 0.2  # above chance (0.1) with random-init tokens
    dims = {r["factors"]["pooling"]: r["extra"].get("dim") for r in digits
            if r["factors"]["layer"] == -1 and r["factors"]["pca"] == 0}
    assert dims.get("cls+avg") in (None, 2 * 192)


def test_probe_and_retrieve_with_spatial_search_on_tokens(capsys):
    probed = run_json(capsys, ["probe", *DEIT, "--task", "digits", "--quick", "--layer", "-2", "--pool", "cls+avg",
                               "--Cs", "1", "--no-progress", "--json"])
    assert probed["config"]["pooling"] == "cls+avg" and probed["config"]["dim"] == 2 * 192
    spatial = run_json(capsys, ["retrieve", *DEIT, "--task", "photo_copies", "--quick", "--layer", "-1",
                                "--spatial-search", "--no-progress", "--json"])
    assert spatial["config"]["pooling"] == "windows" and 0.0 < spatial["value"] <= 1.0
    assert main(["probe", "--source", "timm:swin_tiny_patch4_window7_224", "--weights", "none", "--resolution",
                 "64", "--task", "digits", "--quick", "--pool", "cls", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "layer features of timm:swin_tiny_patch4_window7_224 cannot give pooling 'cls'" in err
    assert len(err.splitlines()) == 1


def test_select_ranks_token_poolings(capsys):
    out = run_json(capsys, ["select", "--task", "digits", "--quick", "--sources", "timm:deit_tiny_patch16_224",
                            "--weights", "none", "--resolution", "32", "--layers", "-1,-2", "--pool", "cls,avg,grid2",
                            "--confirm", "1", "--no-progress", "--json"])
    candidates = out["candidates"]
    assert {(c["layer"], c["pooling"]) for c in candidates} == {(layer, p) for layer in (-1, -2)
                                                               for p in ("cls", "avg", "grid2")}
    assert sum(c["probe"] is not None for c in candidates) == 1


def test_finetune_top_blocks_or_the_whole_vit(tmp_path):
    from transferlab.data.tasks import load_task
    from transferlab.heads.finetune import finetune
    from transferlab.heads.finetune_blocks import plan_blocks
    from transferlab.sources import load_source

    source = load_source("timm:deit_tiny_patch16_224", "none", resolution=32)
    top2 = plan_blocks(source, 2)
    assert top2.layer_names[-2:] == ["blocks.11", "features"]
    assert any(n.startswith("blocks.11.") for n in top2.trainable) and "norm.weight" in top2.trainable
    assert not any(n.startswith("blocks.10.") for n in top2.trainable) and "pos_embed" not in top2.trainable
    whole = plan_blocks(source, None)
    assert {"pos_embed", "cls_token", "patch_embed.proj.weight"} <= set(whole.trainable)
    assert not any(n.startswith("head.") for n in whole.trainable)  # the source classifier never trains

    task = load_task("digits", quick=True)
    result = finetune(source, task, tmp_path / "ft", blocks=2, epochs=1, batch_size=32, progress=False)
    assert result.trainable_parameters > 0 and "digits" in result.metrics
    tuned = result.load_source()
    assert tuned.preprocessing.input_size == 32 and tuned.layers[-1].grid == (2, 2)
    before = dict(source.model.named_parameters())
    after = dict(tuned.model.named_parameters())
    assert not torch.equal(before["blocks.11.mlp.fc2.weight"], after["blocks.11.mlp.fc2.weight"])
    assert torch.equal(before["blocks.3.mlp.fc2.weight"], after["blocks.3.mlp.fc2.weight"])


def test_resolution_errors_are_one_line():
    from transferlab.sources import load_source

    # LeViT's attention biases are fixed to its 14x14 grid and it takes no dynamic_img_size
    with pytest.raises(TransferlabError, match=r"timm:levit_128s cannot run at 160 px: \S"):
        load_source("timm:levit_128s", "none", resolution=160)
