"""Bundles: a study run in three slices, packed without weights and merged, gives the tables of one study."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench.bundle import MANIFEST, merge_bundles, read_bundle, write_bundle
from robench.cli import cli
from robench.errors import RobenchError
from robench.reproduce import ReproduceConfig, reproduce_mnist
from robench.sources import file_hash

_WRITTEN_AT = re.compile(r"written \d{4}-\d\d-\d\d \d\d:\d\d")

# Four defenses (claim 3 is measured: noise and the worst case over FGSM), two seeds, tiny everything.
BASE = dict(model="mlp", epochs=1, train_subset=300, n=20, attacks="noise,fgsm",
            eps={"noise": (0.0, 4.0), "fgsm": (0.0, 0.1)}, device="cpu")  # fmt: skip
WHOLE = ReproduceConfig(defenses=("none", "l2", "dropout", "jr"), seeds=(0, 1), **BASE)
SLICES = {  # the same grid over three "GPU jobs"
    "a": ReproduceConfig(defenses=("none", "l2"), seeds=(0, 1), **BASE),
    "b": ReproduceConfig(defenses=("dropout", "jr"), seeds=(0,), **BASE),
    "c": ReproduceConfig(defenses=("dropout", "jr"), seeds=(1,), **BASE),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One study run at once, the same study run in three slices, their bundles and their merge."""
    root = tmp_path_factory.mktemp("slices")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small gain nothing from a second thread, and on a busy 2-core
    try:  # machine its waits made these 16 runs take 90 s instead of 12
        reproduce_mnist(WHOLE, root / "whole", show_progress=False)
        bundles = []
        for name, config in SLICES.items():
            reproduce_mnist(config, root / name, show_progress=False)
            bundles.append(write_bundle(root / name, root / f"{name}.tar.gz", config=config, extra={"device": "cpu"}))
    finally:
        torch.set_num_threads(threads)
    merged = merge_bundles(bundles, root / "merged")
    return root, bundles, merged


def _claims(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "claims.csv").set_index("claim_id")


def _rows(folder) -> pd.DataFrame:
    df = pd.read_csv(folder / "results.csv")
    return df.sort_values(["model_hash", "attack", "epsilon"]).reset_index(drop=True)


def test_a_bundle_holds_the_results_and_no_weights(study):
    root, bundles, _ = study
    with tarfile.open(bundles[0]) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile(MANIFEST))
    assert not [n for n in names if n.endswith((".safetensors", ".pt"))]
    assert {"results.db", "results.csv", "claims.md", "claims.csv", "timings.json", "runs/none-s1/log.csv",
            "runs/l2-s0/meta.json", "report/report.md"} <= set(names)  # fmt: skip
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
    assert sorted(manifest["runs"]) == ["l2-s0", "l2-s1", "none-s0", "none-s1"]
    entry = manifest["runs"]["l2-s1"]
    assert entry["model_hash"] == file_hash(root / "a" / "runs" / "l2-s1" / "model.safetensors")
    assert entry["seed"] == 1 and entry["defense"] == "l2=0.0005" and entry["finished"] and entry["epochs_done"] == 1
    assert manifest["configs"][0]["defenses"] == ["none", "l2"] and manifest["extra"] == {"device": "cpu"}
    assert {"python", "torch", "numpy", "robench"} <= set(manifest["versions"])
    assert bundles[0].stat().st_size < 1_000_000


def test_three_slices_merged_give_the_tables_of_one_study(study):
    """The acceptance criterion: a study that finishes over three GPU runs gives the same tables."""
    root, _, merged = study
    assert not list(merged.rglob("*.safetensors"))
    whole, sliced = _claims(root / "whole"), _claims(merged)
    assert list(sliced.index) == list(whole.index)
    assert (sliced["verdict"] != "not measured").sum() >= 4  # 1a, 1b, 2, 3a: the comparison has teeth
    for column in ("claim", "verdict", "n", "seeds", "measure", "evidence"):
        assert sliced[column].fillna("").tolist() == whole[column].fillna("").tolist(), column
    for column in ("estimate", "ci_low", "ci_high", "threshold"):
        np.testing.assert_allclose(sliced[column], whole[column], rtol=0, atol=1e-9, equal_nan=True)
    columns = ["model_hash", "attack", "epsilon", "accuracy", "n", "outcomes"]
    pd.testing.assert_frame_equal(_rows(merged)[columns], _rows(root / "whole")[columns])
    summary = [pd.read_csv(f / "report" / "summary.csv") for f in (root / "whole", merged)]
    summary = [s.assign(model=s["model"].map(lambda m: Path(m).name)).sort_values("model").reset_index(drop=True)
               for s in summary]  # fmt: skip
    pd.testing.assert_frame_equal(*summary)
    # the same report but for the order of its models (the merged store holds them in bundle order); with
    # seed bands too: the report finds each run's meta.json in the merged study
    # the minute each report was written is the one line that may differ (the two are written a minute apart
    # when the minute turns between them)
    report = [sorted(_WRITTEN_AT.sub("written WHEN", (f / "report" / "report.md").read_text().replace(str(f), "STUDY"))
                     .splitlines()) for f in (root / "whole", merged)]  # fmt: skip
    assert report[0] == report[1]
    manifest = json.loads((merged / MANIFEST).read_text())
    assert manifest["defenses"] == ["none", "l2", "dropout", "jr"] and manifest["seeds"] == [0, 1]
    assert len(manifest["runs"]) == 8 and len(manifest["configs"]) == 3 and len(manifest["sources"]) == 3


def test_clean_outcomes_from_the_store_equal_the_weights(study):
    """At ε = 0 an attack's outcome is clean correctness: the store gives what the weights give."""
    from robench.claims import Evidence

    root = study[0]
    evidence = Evidence(WHOLE, root / "whole", root / "whole" / "results.csv")
    for defense in WHOLE.defenses:
        for model_hash, run in zip(evidence.hashes[defense], evidence.runs[defense]):
            stored, weights = evidence.stored_clean(model_hash), evidence.weights_clean(run)
            assert len(stored) == WHOLE.n and len(weights) == 10_000
            np.testing.assert_array_equal(stored, weights[: WHOLE.n])
    assert "the store's ε = 0 outcomes" in _claims(root / "whole").loc["1b", "measure"]


def test_a_row_in_several_bundles_counts_once(study, tmp_path):
    root, bundles, merged = study
    again = merge_bundles([bundles[0], bundles[0], merged, *bundles[1:]], tmp_path / "again")
    assert len(_rows(again)) == len(_rows(merged)) and (_rows(again)["n"] == 20).all()
    assert _claims(again)["n"].tolist() == _claims(merged)["n"].tolist()
    # a merged study re-bundled (its hashes come from its own bundle.json) merges like its slices
    rebundled = write_bundle(again, tmp_path / "merged.tar.gz")
    third = merge_bundles([rebundled, bundles[2]], again)  # an earlier merge is replaced in place
    pd.testing.assert_frame_equal(_rows(third)[["model_hash", "accuracy"]], _rows(merged)[["model_hash", "accuracy"]])


def test_cli_merge_names_what_is_still_missing(study, tmp_path):
    _, bundles, _ = study
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["reproduce", "merge", *map(str, bundles[:2]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 runs, 4 defenses (none, l2, dropout, jr), 2 seeds (0, 1)" in result.output
    assert "jr seeds 1,2,3,4" in result.output and "base+adv seeds 0,1,2,3,4" in result.output
    assert (out / "claims.md").is_file() and (out / "report" / "report.md").is_file()


def _evil_tar(path, name="../evil", kind=tarfile.REGTYPE):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, 0 if kind != tarfile.REGTYPE else 4
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    return path


def _junk(path):
    path.write_bytes(b"not a tar at all")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _evil_tar(p), "member '../evil' points outside it"),
    (lambda p: _evil_tar(p, "/tmp/evil"), "points outside it"),
    (lambda p: _evil_tar(p, "runs/x/meta.json", tarfile.SYMTYPE), "is a link or special file"),
    (lambda p: _evil_tar(p, "notes.txt"), "unexpected member 'notes.txt'"),
    (lambda p: _junk(p), "is not a robench bundle"),
    (lambda p: p.parent / "missing.tar.gz", "not found"),
])  # fmt: skip
def test_hostile_or_foreign_bundles_are_one_line(tmp_path, make, message):
    bad = make(tmp_path / "bad.tar.gz")
    with pytest.raises(RobenchError, match=message):
        read_bundle(bad, tmp_path / "into")
    assert not (tmp_path / "evil").exists()
    result = CliRunner().invoke(cli, ["reproduce", "merge", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")


def test_one_run_name_with_two_models_is_refused(study, tmp_path):
    _, bundles, _ = study
    other = tmp_path / "other"
    read_bundle(bundles[0], other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["runs"]["none-s0"]["model_hash"] = "0" * 16
    (other / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["reproduce", "merge", str(bundles[0]), str(other), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "none-s0" in result.output and str(bundles[0]) in result.output and str(other) in result.output
    assert not (tmp_path / "m").exists()


def test_slices_of_different_recipes_are_refused(study, tmp_path):
    _, bundles, _ = study
    read_bundle(bundles[2], tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    manifest["configs"][0]["epochs"] = 2
    (tmp_path / "c" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RobenchError, match=r"different recipes \(epochs: 1, 2\)"):
        merge_bundles([bundles[0], tmp_path / "c"], tmp_path / "m")
