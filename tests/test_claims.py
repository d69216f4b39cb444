"""imbalens.study.claims: each claim on hand-made numbers whose truth is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imbalens.study.claims import CLAIMS, claims_from_table, evaluate_claims, verdict_text
from imbalens.study.results import GridResults


def table(**cols: list[float]) -> pd.DataFrame:
    """A loss table for resnet50 / multilabel with losses bce, wbce, focal, cbfocal."""
    n = len(next(iter(cols.values())))
    losses = ["bce", "wbce", "focal", "cbfocal"][:n]
    base = {"model": ["resnet50"] * n, "task": ["multilabel"] * n, "loss": losses}
    full = {
        k: [np.nan] * n for k in ("auroc", "ap", "mean_prob", "iobb", "ior", "disjoint", "unique")
    }
    full.update(cols)
    return pd.DataFrame(base | full)


def verdict(frame: pd.DataFrame, claim: str, tolerance: float = 0.02) -> tuple[object, str]:
    out = claims_from_table(frame, tolerance).set_index("claim")
    return out.loc[claim, "holds"], out.loc[claim, "evidence"]


def test_performance_equal_uses_max_abs_difference() -> None:
    frame = table(auroc=[0.80, 0.81, 0.79, 0.815], ap=[0.40, 0.41, 0.39, 0.40])
    holds, evidence = verdict(frame, "performance_equal")
    assert holds is True
    assert "max |loss - BCE| = 0.015 <= 0.02" in evidence
    frame.loc[3, "ap"] = 0.43  # 0.03 > 0.02
    holds, evidence = verdict(frame, "performance_equal")
    assert holds is False and "0.030 > 0.02" in evidence
    holds, _ = verdict(frame, "performance_equal", tolerance=0.05)
    assert holds is True


def test_probability_up_needs_every_weighted_loss() -> None:
    holds, evidence = verdict(table(mean_prob=[0.10, 0.30, 0.20, 0.40]), "probability_up")
    assert holds is True and "3/3 weighted losses" in evidence and "WBCE 0.300 (+0.2)" in evidence
    holds, evidence = verdict(table(mean_prob=[0.10, 0.30, 0.05, 0.40]), "probability_up")
    assert holds is False and "2/3" in evidence
    holds, _ = verdict(table(mean_prob=[0.10, 0.10, 0.20, 0.40]), "probability_up")
    assert holds is False  # equal is not "raise"


def test_alignment_up_needs_iobb_up_and_ior_down() -> None:
    ok = table(iobb=[0.2, 0.3, 0.3, 0.3], ior=[0.3, 0.2, 0.2, 0.2])
    assert verdict(ok, "alignment_up")[0] is True
    ior_up = table(iobb=[0.2, 0.3, 0.3, 0.3], ior=[0.3, 0.2, 0.4, 0.2])
    holds, evidence = verdict(ior_up, "alignment_up")
    assert holds is False and "2/3 weighted losses: iobb up and ior down" in evidence


def test_concepts_up_and_missing_losses_are_named() -> None:
    frame = table(disjoint=[2.0, 3.0], unique=[1.0, 1.5])  # only bce and wbce
    holds, evidence = verdict(frame, "concepts_up")
    assert holds is True
    assert "not in this grid: Focal, CB-Focal" in evidence


def test_missing_data_gives_none() -> None:
    frame = table(auroc=[0.8, 0.8])  # no ap, no mean_prob, no analysis
    for name in CLAIMS:
        holds, evidence = verdict(frame, name)
        assert holds is None, name
        assert "lacks" in evidence or "no " in evidence
    no_bce = table(mean_prob=[np.nan, 0.3, 0.2, 0.1])
    holds, evidence = verdict(no_bce, "probability_up")
    assert holds is None and "BCE" in evidence


def grid_results(mean_prob: list[float], iobb: list[float], ior: list[float]) -> GridResults:
    losses = ["bce", "wbce", "focal", "cbfocal"][: len(mean_prob)]
    meta = {"model": "t-densenet", "task": "multilabel", "seed": 0}
    runs = pd.DataFrame(
        [meta | {"run_id": f"r-{x}", "loss": x, "status": "analysed", "path": "."} for x in losses]
    )
    perf = pd.DataFrame(
        [
            meta
            | {
                "run": f"r-{x}",
                "loss": x,
                "class": "Average",
                "auroc": 0.8,
                "ap": 0.4,
                "mean_prob": p,
            }
            for x, p in zip(losses, mean_prob, strict=True)
        ]
    )
    align = pd.DataFrame(
        [
            meta | {"run": f"r-{x}", "loss": x, "finding": "all", "iobb": b, "ior": r}
            for x, b, r in zip(losses, iobb, ior, strict=True)
        ]
    )
    concepts = pd.DataFrame(columns=["run", "model", "loss", "task", "seed", "disjoint", "unique"])
    return GridResults(Path("."), runs, perf, align, concepts)


def test_evaluate_claims_adds_the_papers_verdict() -> None:
    res = grid_results([0.1, 0.2], [0.2, 0.3], [0.3, 0.2])
    out = evaluate_claims(res).set_index("claim")
    assert list(out.index) == list(CLAIMS)
    assert out.loc["performance_equal", "holds"] is True
    assert out.loc["alignment_up", "holds"] is True
    assert out.loc["concepts_up", "holds"] is None
    # paper, multi-label T-DenseNet: Focal lowers IoBB (0.1855 < 0.2105): does not hold
    assert out.loc["alignment_up", "paper_holds"] is False
    # only WBCE raises IoBB (0.2836) and lowers IoR (0.2252 < 0.2951); CB-Focal raises IoR
    assert "1/3 weighted losses" in out.loc["alignment_up", "paper_evidence"]
    # Table 2, multi-label T-DenseNet: every weighted loss raises both counts
    assert out.loc["concepts_up", "paper_holds"] is True
    assert out.loc["probability_up", "paper_holds"] is None
    assert "Fig. 2" in out.loc["probability_up", "paper_evidence"]


def test_evaluate_claims_rejects_negative_tolerance() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        evaluate_claims(grid_results([0.1], [0.2], [0.3]), tolerance=-1)


def test_verdict_text() -> None:
    assert verdict_text(True) == "holds"
    assert verdict_text(False) == "does not hold"
    assert verdict_text(None) == "no data"


def test_claims_view_labels_and_styles() -> None:
    from imbalens.study.claims import VERDICT_COLOURS, claims_view, style_claims

    view = claims_view(evaluate_claims(grid_results([0.1, 0.2], [0.2, 0.3], [0.3, 0.2])))
    assert view.index.names == ["task", "model", "claim"]
    assert view.index[0][:2] == ("multi-label", "T-DenseNet")
    assert view["this grid"].tolist() == ["holds", "holds", "holds", "no data"]
    assert view["paper"].tolist() == ["not in a table", "not in a table", "does not hold", "holds"]
    html = style_claims(view).to_html()
    assert VERDICT_COLOURS["holds"] in html and VERDICT_COLOURS["no data"] in html


def test_evidence_shows_seed_spread() -> None:
    frame = table(mean_prob=[0.10, 0.30])
    frame["mean_prob_sd"] = [0.01, np.nan]
    _, evidence = verdict(frame, "probability_up")
    assert "BCE 0.100±0.01" in evidence and "WBCE 0.300 (+0.2)" in evidence
