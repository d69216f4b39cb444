"""Check the paper's four claims against a grid's numbers (and against the paper's own).

Khakzar, Li et al. (2022) claim that, compared with plain BCE, the cost-sensitive losses
(WBCE, Focal, CB-Focal)

1. ``performance_equal``: leave AUROC and AP about equal,
   $\\max_{\\ell} |m_\\ell - m_\\mathrm{BCE}| \\le \\varepsilon$ for $m \\in \\{\\mathrm{AUROC}, \\mathrm{AP}\\}$
   (class average, multi-label; "Unhealthy", binary), $\\varepsilon$ = ``tolerance``;
2. ``probability_up``: raise the mean predicted probability, $\\bar p_\\ell > \\bar p_\\mathrm{BCE}$;
3. ``alignment_up``: raise soft IoBB and lower soft IoR (the mean over all boxed maps);
4. ``concepts_up``: raise the normalised concept counts, Disjoint and Unique.

A claim *holds* for a (model, task) when it holds for every weighted loss present in the
grid; the evidence string gives every number (mean ± sd over seeds when the grid has
several) and how many of the weighted losses agree.
When BCE or every weighted loss is missing, or a stage has not run, the verdict is
``None`` and the evidence says what is missing. The same rules are applied to the
paper's Tables 1 and 2 (:func:`imbalens.study.results.paper_loss_table`) to give the paper's own
verdict where the paper tabulates the numbers (claims 3 and 4); claims 1 and 2 are only
shown in the paper's Figure 2 as bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from imbalens.study.results import (
    WEIGHTED_LOSSES,
    GridResults,
    loss_label,
    loss_table,
    ordered,
    paper_loss_table,
)

Verdict = tuple[bool | None, str]


@dataclass(frozen=True)
class Claim:
    """One claim: its id, the sentence shown in the book, and how to check it."""

    name: str
    text: str
    check: Callable[[pd.DataFrame, float], Verdict]


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 10 else f"{x:.3f}"


def _value(sub: pd.DataFrame, loss: str, col: str) -> str:
    """``0.300`` or, with several seeds, ``0.300±0.012`` (mean ± sd over seeds)."""
    text = _fmt(float(sub.at[loss, col]))
    sd_col = f"{col}_sd"
    if sd_col in sub.columns and pd.notna(sub.at[loss, sd_col]):
        text += f"±{float(sub.at[loss, sd_col]):.2g}"
    return text


def _present(sub: pd.DataFrame, cols: tuple[str, ...]) -> tuple[float | None, list[str], str]:
    """BCE's row and the weighted losses that have all ``cols``; or a reason why not."""
    ok = sub.dropna(subset=list(cols))
    if "bce" not in ok.index:
        have = "no BCE run" if "bce" not in sub.index else f"BCE run lacks {'/'.join(cols)}"
        return None, [], have
    weighted = [loss for loss in WEIGHTED_LOSSES if loss in ok.index]
    if not weighted:
        return None, [], f"no weighted loss (WBCE/Focal/CB-Focal) with {'/'.join(cols)}"
    return 0.0, weighted, ""


def _missing_note(sub: pd.DataFrame, weighted: list[str]) -> str:
    absent = [loss_label(x) for x in WEIGHTED_LOSSES if x not in weighted]
    return f"; not in this grid: {', '.join(absent)}" if absent else ""


def _direction(sub: pd.DataFrame, cols_signs: tuple[tuple[str, int], ...]) -> Verdict:
    """Every weighted loss moves each column in its sign's direction vs BCE (strictly)."""
    cols = tuple(c for c, _ in cols_signs)
    ok, weighted, why = _present(sub, cols)
    if ok is None:
        return None, why
    parts, agree = [], 0
    for col, _ in cols_signs:
        bce = float(sub.at["bce", col])
        items = [f"BCE {_value(sub, 'bce', col)}"]
        for loss in weighted:
            v = float(sub.at[loss, col])
            items.append(f"{loss_label(loss)} {_value(sub, loss, col)} ({v - bce:+.3g})")
        parts.append(f"{col}: " + ", ".join(items))
    for loss in weighted:
        agree += all(
            math.copysign(1, float(sub.at[loss, c]) - float(sub.at["bce", c])) == s
            and float(sub.at[loss, c]) != float(sub.at["bce", c])
            for c, s in cols_signs
        )
    holds = agree == len(weighted)
    arrow = " and ".join(f"{c} {'up' if s > 0 else 'down'}" for c, s in cols_signs)
    evidence = "; ".join(parts) + f" | {agree}/{len(weighted)} weighted losses: {arrow}"
    return holds, evidence + _missing_note(sub, weighted)


def _performance_equal(sub: pd.DataFrame, tolerance: float) -> Verdict:
    ok, weighted, why = _present(sub, ("auroc", "ap"))
    if ok is None:
        return None, why
    parts, worst = [], 0.0
    for col in ("auroc", "ap"):
        bce = float(sub.at["bce", col])
        items = [f"BCE {_value(sub, 'bce', col)}"]
        for loss in weighted:
            v = float(sub.at[loss, col])
            worst = max(worst, abs(v - bce))
            items.append(f"{loss_label(loss)} {_value(sub, loss, col)} ({v - bce:+.3f})")
        parts.append(f"{col}: " + ", ".join(items))
    holds = worst <= tolerance
    sign = "<=" if holds else ">"
    evidence = "; ".join(parts) + f" | max |loss - BCE| = {worst:.3f} {sign} {tolerance:g}"
    return holds, evidence + _missing_note(sub, weighted)


CLAIMS: dict[str, Claim] = {
    c.name: c
    for c in (
        Claim(
            "performance_equal",
            "AUROC and AP about equal across losses",
            _performance_equal,
        ),
        Claim(
            "probability_up",
            "weighted losses raise the mean predicted probability",
            lambda sub, tol: _direction(sub, (("mean_prob", +1),)),
        ),
        Claim(
            "alignment_up",
            "weighted losses raise IoBB and lower IoR",
            lambda sub, tol: _direction(sub, (("iobb", +1), ("ior", -1))),
        ),
        Claim(
            "concepts_up",
            "weighted losses raise concept counts (Disjoint, Unique)",
            lambda sub, tol: _direction(sub, (("disjoint", +1), ("unique", +1))),
        ),
    )
}
"""The registry of claims, in the paper's order."""

PAPER_TABULATED = {"alignment_up", "concepts_up"}
"""Claims whose numbers the paper gives in a table (Tables 1 and 2)."""


def claims_from_table(table: pd.DataFrame, tolerance: float = 0.02) -> pd.DataFrame:
    """Evaluate every claim on a :func:`imbalens.study.results.loss_table`-shaped frame.

    Returns one row per (model, task, claim): model, task, claim, statement, holds
    (``True``/``False``/``None``), evidence.
    """
    rows = []
    for (model, task), sub in table.groupby(["model", "task"], sort=False):
        indexed = sub.drop_duplicates("loss").set_index("loss")
        for claim in CLAIMS.values():
            holds, evidence = claim.check(indexed, tolerance)
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "claim": claim.name,
                    "statement": claim.text,
                    "holds": holds,
                    "evidence": evidence,
                }
            )
    return pd.DataFrame(rows, columns=["model", "task", "claim", "statement", "holds", "evidence"])


def evaluate_claims(results: GridResults, tolerance: float = 0.02) -> pd.DataFrame:
    """The claims table of a grid, with the paper's verdict on the same claim beside it.

    Args:
        results: a loaded grid (:func:`imbalens.study.results.load_grid`).
        tolerance: the largest |AUROC or AP difference to BCE| still called "about equal".

    Returns:
        One row per (model, task, claim) present in the grid: model, task, claim,
        statement, holds (bool, or ``None`` when the data are missing), evidence (the
        numbers), paper_holds, paper_evidence.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    ours = claims_from_table(loss_table(results), tolerance)
    paper = claims_from_table(paper_loss_table(), tolerance).rename(
        columns={"holds": "paper_holds", "evidence": "paper_evidence"}
    )
    merged = ours.merge(paper.drop(columns="statement"), on=["model", "task", "claim"], how="left")
    untabulated = ~merged["claim"].isin(PAPER_TABULATED)
    merged.loc[untabulated, "paper_holds"] = None
    merged.loc[untabulated, "paper_evidence"] = "claimed in the text; shown only as bars (Fig. 2)"
    no_paper = merged["paper_evidence"].isna()
    merged.loc[no_paper, "paper_evidence"] = "the paper has no such (model, task)"
    merged["holds"] = merged["holds"].astype(object)
    merged["paper_holds"] = (
        merged["paper_holds"].astype(object).where(merged["paper_holds"].notna(), None)
    )
    order = {name: i for i, name in enumerate(CLAIMS)}
    models = ordered(merged["model"], ("t-densenet", "resnet50"))
    merged = merged.sort_values(
        ["task", "model", "claim"],
        key=lambda c: (
            c.map(order)
            if c.name == "claim"
            else (
                c.map({m: i for i, m in enumerate(models)})
                if c.name == "model"
                else c.map({"multilabel": 0, "binary": 1}).fillna(2)
            )
        ),
    )
    return merged.reset_index(drop=True)


def verdict_text(holds: bool | None) -> str:
    """``"holds"``, ``"does not hold"`` or ``"no data"``."""
    if holds is None or (isinstance(holds, float) and math.isnan(holds)):
        return "no data"
    return "holds" if holds else "does not hold"


VERDICT_COLOURS: dict[str, str] = {
    "holds": "#cde6f5",  # light Okabe-Ito blue
    "does not hold": "#fbe0c2",  # light Okabe-Ito orange
    "no data": "#ececec",
    "not in a table": "#ececec",
}
"""Background of a verdict cell in the book (the text says it too)."""


def claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """:func:`evaluate_claims`'s frame with display labels, indexed (task, model, claim).

    Columns: this grid, evidence (this grid), paper, evidence (paper); verdicts are
    :func:`verdict_text` strings.
    """
    from imbalens.study.results import TASK_LABELS, model_label

    view = pd.DataFrame(
        {
            "task": claims["task"].map(lambda t: TASK_LABELS.get(t, t)),
            "model": claims["model"].map(model_label),
            "claim": claims["statement"],
            "this grid": claims["holds"].map(verdict_text),
            "evidence (this grid)": claims["evidence"],
            "paper": [
                "not in a table" if claim not in PAPER_TABULATED else verdict_text(h)
                for claim, h in zip(claims["claim"], claims["paper_holds"], strict=True)
            ],
            "evidence (paper)": claims["paper_evidence"],
        }
    )
    return view.set_index(["task", "model", "claim"])


def style_claims(view: pd.DataFrame) -> Any:
    """A pandas ``Styler`` of :func:`claims_view`: coloured verdicts, full evidence text."""
    return (
        view.style.map(
            lambda v: f"background-color: {VERDICT_COLOURS[v]}" if v in VERDICT_COLOURS else "",
            subset=["this grid", "paper"],
        )
        .set_properties(**{"text-align": "left", "vertical-align": "top"})
        .set_table_styles([{"selector": "td, th", "props": "padding: 3px 8px;"}])
    )
