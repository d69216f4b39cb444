"""imbalens.study.claims: each claim on hand-made numbers whose truth is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imbalens.study.claims import (
    CLAIMS,
    ci_verdict,
    claims_from_table,
    claims_from_uncertainty,
    evaluate_claims,
    verdict_changes,
    verdict_text,
)
from imbalens.study.results import GridResults
from imbalens.study.stats import UNCERTAINTY_COLUMNS


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


EMPTY_UNC = pd.DataFrame(columns=UNCERTAINTY_COLUMNS)


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
    out = evaluate_claims(res, uncertainty=EMPTY_UNC).set_index("claim")
    assert list(out.index) == list(CLAIMS)
    assert out.loc["performance_equal", "sign_holds"] is True
    assert out.loc["alignment_up", "sign_holds"] is True
    assert out.loc["concepts_up", "sign_holds"] is None
    # no per-item files behind these runs: no CI, so no CI verdict
    assert out["verdict"].tolist() == ["no data"] * 4
    # paper, multi-label T-DenseNet: Focal lowers IoBB (0.1855 < 0.2105): does not hold
    assert out.loc["alignment_up", "paper_holds"] is False
    # only WBCE raises IoBB (0.2836) and lowers IoR (0.2252 < 0.2951); CB-Focal raises IoR
    assert "1/3 weighted losses" in out.loc["alignment_up", "paper_evidence"]
    # Table 2, multi-label T-DenseNet: every weighted loss raises both counts
    assert out.loc["concepts_up", "paper_holds"] is True
    assert out.loc["probability_up", "paper_holds"] is None
    assert "Fig. 2" in out.loc["probability_up", "paper_evidence"]


def test_evaluate_claims_rejects_negative_tolerance() -> None:
    with pytest.raises(ValueError, match="margin"):
        evaluate_claims(grid_results([0.1], [0.2], [0.3]), margin=-1)


def test_verdict_text() -> None:
    assert verdict_text(True) == "holds"
    assert verdict_text(False) == "does not hold"
    assert verdict_text(None) == "no data"


def test_claims_view_labels_and_styles() -> None:
    from imbalens.study.claims import VERDICT_COLOURS, claims_view, style_claims

    res = grid_results([0.1, 0.2], [0.2, 0.3], [0.3, 0.2])
    view = claims_view(evaluate_claims(res, uncertainty=EMPTY_UNC))
    assert view.index.names == ["task", "model", "claim"]
    assert view.index[0][:2] == ("multi-label", "T-DenseNet")
    assert view["sign test (old)"].tolist() == ["holds", "holds", "holds", "no data"]
    assert view["verdict (95% CI)"].tolist() == ["no data"] * 4
    assert view["paper (no CI)"].tolist() == [
        "not in a table",
        "not in a table",
        "does not hold",
        "holds",
    ]
    html = style_claims(view).to_html()
    assert VERDICT_COLOURS["holds"] in html and VERDICT_COLOURS["no data"] in html


def test_evidence_shows_seed_spread() -> None:
    frame = table(mean_prob=[0.10, 0.30])
    frame["mean_prob_sd"] = [0.01, np.nan]
    _, evidence = verdict(frame, "probability_up")
    assert "BCE 0.100±0.01" in evidence and "WBCE 0.300 (+0.2)" in evidence


def unc(
    metric: str, cis: dict[str, tuple[float, float] | None], task: str = "multilabel"
) -> list[dict]:
    """Hand-made uncertainty rows of one metric: {loss: (lo, hi) of loss - BCE}."""
    label = "all" if metric not in ("auroc", "ap", "mean_prob") else "Average"
    rows = [{"metric": metric, "loss": "bce", "value": 0.5, "diff": np.nan}]
    for loss, ci in cis.items():
        lo, hi = ci if ci is not None else (np.nan, np.nan)
        diff = (lo + hi) / 2 if ci is not None else 0.01
        rows.append({"metric": metric, "loss": loss, "value": 0.5 + diff, "diff": diff,
                     "ci_lo": lo, "ci_hi": hi})  # fmt: skip
    base = {"model": "resnet50", "task": task, "label": label, "method": "paired bootstrap"}
    return [base | r for r in rows]


def ci_rows(*parts: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([r for part in parts for r in part]).reindex(columns=UNCERTAINTY_COLUMNS)
    return frame.set_index(["metric", "loss"], drop=False)


W3 = ("wbce", "focal", "cbfocal")


def test_direction_verdicts_holds_contradicted_inconclusive() -> None:
    claim = CLAIMS["alignment_up"]
    up, down, zero = (0.01, 0.05), (-0.05, -0.01), (-0.01, 0.02)
    holds = ci_rows(unc("iobb", dict.fromkeys(W3, up)), unc("ior", dict.fromkeys(W3, down)))
    verdict, evidence, reason = ci_verdict(claim, holds)
    assert verdict == "holds" and "6/6 CIs exclude 0" in evidence
    assert "WBCE +0.030 [+0.010, +0.050]" in evidence
    # one loss's IoR rises significantly: contradicted, and the reason names it
    bad = ci_rows(
        unc("iobb", dict.fromkeys(W3, up)),
        unc("ior", {"wbce": down, "focal": up, "cbfocal": down}),
    )
    verdict, _, reason = ci_verdict(claim, bad)
    assert verdict == "contradicted" and "Focal" in reason and "other way" in reason
    # one CI contains 0: inconclusive (the old sign test would say holds: +0.005 > 0)
    unsure = ci_rows(
        unc("iobb", {"wbce": up, "focal": zero, "cbfocal": up}),
        unc("ior", dict.fromkeys(W3, down)),
    )
    verdict, _, reason = ci_verdict(claim, unsure)
    assert verdict == "inconclusive" and "Focal +0.005 [-0.010, +0.020] includes 0 (IoBB)" in reason
    # contradicted beats inconclusive
    both = ci_rows(
        unc("iobb", {"wbce": zero, "focal": down}), unc("ior", {"wbce": down, "focal": down})
    )
    assert ci_verdict(claim, both)[0] == "contradicted"
    # no CI at all (one seed of a concept count): inconclusive
    none = ci_rows(unc("disjoint", {"wbce": None}), unc("unique", {"wbce": None}))
    verdict, evidence, reason = ci_verdict(CLAIMS["concepts_up"], none)
    assert verdict == "inconclusive" and "has no CI" in reason and "not compared: Focal" in evidence


def test_equivalence_verdicts_with_margin() -> None:
    claim = CLAIMS["performance_equal"]
    inside = ci_rows(
        unc("auroc", dict.fromkeys(W3, (-0.01, 0.015))), unc("ap", dict.fromkeys(W3, (-0.019, 0.0)))
    )
    verdict, evidence, _ = ci_verdict(claim, inside, margin=0.02)
    assert verdict == "equivalent" and "6/6 CIs inside ±0.02" in evidence
    assert ci_verdict(claim, inside, margin=0.01)[0] == "inconclusive"  # margin is a parameter
    outside = ci_rows(unc("auroc", {"wbce": (0.03, 0.06)}), unc("ap", {"wbce": (-0.01, 0.01)}))
    verdict, _, reason = ci_verdict(claim, outside)
    assert verdict == "not equivalent" and "outside ±0.02" in reason
    crossing = ci_rows(unc("auroc", {"wbce": (0.01, 0.03)}), unc("ap", {"wbce": (-0.01, 0.01)}))
    verdict, _, reason = ci_verdict(claim, crossing)
    assert verdict == "inconclusive" and "crosses ±0.02" in reason
    no_bce = ci_rows(unc("auroc", {"wbce": (0.0, 0.01)}), unc("ap", {"wbce": (0.0, 0.01)}))
    no_bce = no_bce[no_bce["loss"] != "bce"]
    assert ci_verdict(claim, no_bce)[0] == "no data"


def test_claims_from_uncertainty_and_changed_verdicts() -> None:
    frame = ci_rows(
        unc("auroc", {"wbce": (-0.01, 0.01)}),
        unc("ap", {"wbce": (-0.01, 0.01)}),
        unc("mean_prob", {"wbce": (-0.01, 0.03)}),
        unc("iobb", {"wbce": (0.01, 0.03)}),
        unc("ior", {"wbce": (-0.03, -0.01)}),
    ).reset_index(drop=True)
    ci = claims_from_uncertainty(frame).set_index("claim")
    assert ci["verdict"].tolist() == ["equivalent", "inconclusive", "holds", "no data"]
    # beside the sign test: probability_up said "holds" (+0.01 > 0), now inconclusive
    claims = ci.reset_index().assign(
        statement=[c.text for c in CLAIMS.values()],
        sign_holds=[True, True, True, None],
    )
    changes = verdict_changes(claims)
    assert len(changes) == 2
    assert "raise the mean predicted probability" in changes[0]
    assert (
        "*holds*" in changes[0] and "**inconclusive**" in changes[0] and "includes 0" in changes[0]
    )
    assert changes[-1] == "1 of 4 verdicts changed, 3 stayed the same."


def test_evidence_shows_t_interval_with_several_seeds() -> None:
    rows = ci_rows(unc("mean_prob", {"wbce": (0.01, 0.03)}))
    rows["n_seeds"] = 3
    rows.loc[rows["loss"] == "wbce", ["diff_lo", "diff_t_lo", "diff_t_hi"]] = [0.01, -0.01, 0.05]
    verdict, evidence, _ = ci_verdict(CLAIMS["probability_up"], rows)
    assert verdict == "holds"  # the verdict uses the hierarchical bootstrap CI
    assert "WBCE +0.020 [+0.010, +0.030] (t over 3 seeds: [-0.010, +0.050])" in evidence


def test_differences_view_labels_and_formats_the_summary_differences() -> None:
    from imbalens.study.claims import differences_view

    rows = ci_rows(
        unc("auroc", {"wbce": (-0.01, 0.03)}),
        unc("iobb", {"cbfocal": (0.02, 0.04)}, task="binary"),
    ).reset_index(drop=True)
    rows["n_seeds"] = [1, 1, 3, 3]
    rows.loc[3, ["diff_t_lo", "diff_t_hi"]] = [0.01, 0.05]
    rows.loc[1, "label"] = "Mass"  # not the summary row of AUROC: left out
    view = differences_view(rows)
    assert list(view.index) == [("binary", "ResNet50", "IoBB", "CB-Focal")]
    row = view.iloc[0]
    assert row["loss - BCE [95% CI]"] == "+0.030 [+0.020, +0.040]"
    assert row["t over seeds"] == "+0.030 [+0.010, +0.050]"
    assert row["method"] == "paired bootstrap"
    rows.loc[1, "label"] = "Average"
    one_seed = differences_view(rows).loc[("multi-label", "ResNet50", "AUROC", "WBCE")]
    assert one_seed["t over seeds"] == "— (1 seed)"
    assert differences_view(EMPTY_UNC).empty
