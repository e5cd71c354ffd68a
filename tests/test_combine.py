"""seal combine: the weighted rank average of scores files, id matching, NaN handling, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from seal_core.errors import ConfigError
from seal_core.ranker.combine_files import CombineConfig, combine
from seal_core.ranker.scores import read_scores_metadata, write_scores

IDS = [f"s{i:02d}" for i in range(8)]


def _write(path, ids, scores, method):
    write_scores(path, ids, scores, metadata={"method": method})
    return str(path)


def _read(out):
    return pq.read_table(out / "scores.parquet").to_pandas().set_index("sample_id")


def test_rank_average_of_files_in_any_row_order(tmp_path):
    a = np.array([8.0, 7, 6, 5, 4, 3, 2, 1])  # s00 best
    b = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])  # s07 best
    fa = _write(tmp_path / "a.parquet", IDS, a, "loss")
    perm = [3, 0, 6, 1, 7, 2, 5, 4]  # the second file lists its rows in another order
    fb = _write(tmp_path / "b.parquet", [IDS[i] for i in perm], b[perm], "seal-probe")
    out = tmp_path / "blend"
    combine(CombineConfig(scores=[fa, fb], weights=[3.0, 1.0], out=str(out), progress=False))
    t = _read(out)
    rank_a, rank_b = (np.argsort(np.argsort(a)) + 1) / 8.0, (np.argsort(np.argsort(b)) + 1) / 8.0
    np.testing.assert_allclose(t.loc[IDS, "score"], (3 * rank_a + rank_b) / 4)
    assert t.loc["s00", "rank"] == 1 and t.loc["s07", "rank"] == 8  # the heavier file wins
    meta = read_scores_metadata(out / "scores.parquet")
    assert [i["method"] for i in meta["inputs"]["scores"]] == ["loss", "seal-probe"]
    assert [i["weight"] for i in meta["inputs"]["scores"]] == [3.0, 1.0]
    assert json.loads((out / "config.json").read_text())["weights"] == [3.0, 1.0]
    # Weight 0 on the second file: exactly the first file's ranking.
    combine(CombineConfig(scores=[fa, fb], weights=[1.0, 0.0], out=str(tmp_path / "one"), progress=False))
    assert list(_read(tmp_path / "one").sort_values("rank").index) == IDS


def test_a_sample_unscored_in_any_file_is_unscored_and_last(tmp_path):
    a = np.arange(8, dtype=float)
    b = a.copy()
    b[7] = np.nan  # s07 would be best in both
    fa, fb = _write(tmp_path / "a.parquet", IDS, a, "loss"), _write(tmp_path / "b.parquet", IDS, b, "loss")
    combine(CombineConfig(scores=[fa, fb], out=str(tmp_path / "o"), progress=False))
    t = _read(tmp_path / "o")
    assert np.isnan(t.loc["s07", "score"]) and t.loc["s07", "rank"] == 8 and t.loc["s07", "weight"] == 0
    assert t.loc["s06", "rank"] == 1


def test_files_of_different_pools_are_refused_with_one_line(tmp_path, capsys):
    from seal_cli.main import main

    fa = _write(tmp_path / "a.parquet", IDS, np.arange(8.0), "loss")
    fb = _write(tmp_path / "b.parquet", IDS[:7] + ["other"], np.arange(8.0), "loss")
    assert main(["combine", "--scores", fa, fb, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.parquet" in err and "1 ids only here" in err and "'other'" in err
    assert not (tmp_path / "o" / "scores.parquet").exists()
    assert main(["combine", "--scores", fa, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "at least two" in capsys.readouterr().err


def test_cli_writes_a_scores_file_select_can_read(tmp_path):
    from seal_cli.main import main

    fa = _write(tmp_path / "a.parquet", IDS, np.arange(8.0), "loss")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "scores.parquet", IDS, -np.arange(8.0), "seal")  # an output directory works too
    assert main(["combine", "--scores", fa, str(run_dir), "--weights", "2", "1", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    t = _read(tmp_path / "o")
    assert len(t) == 8 and t["score"].between(0, 1).all() and t.loc["s07", "rank"] == 1


def test_weights_are_checked():
    with pytest.raises(ConfigError, match="one per file"):
        CombineConfig(scores=["a", "b"], weights=[1.0])
    with pytest.raises(ConfigError, match=">= 0"):
        CombineConfig(scores=["a", "b"], weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="positive"):
        CombineConfig(scores=["a", "b"], weights=[0.0, 0.0])
