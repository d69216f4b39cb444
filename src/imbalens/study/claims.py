r"""Check the paper's four claims against a grid's numbers, with their uncertainty.

Khakzar, Li et al. (2022) claim that, compared with plain BCE, the cost-sensitive losses
(WBCE, Focal, CB-Focal)

1. ``performance_equal``: leave AUROC and AP about equal (class average, multi-label;
   "Unhealthy", binary);
2. ``probability_up``: raise the mean predicted probability;
3. ``alignment_up``: raise soft IoBB and lower soft IoR (the mean over all boxed maps);
4. ``concepts_up``: raise the normalised concept counts, Disjoint and Unique.

**Verdicts with uncertainty** (:func:`ci_verdict`). For each weighted loss
:math:`\ell` and metric :math:`m` of a claim, :mod:`imbalens.study.stats` gives a 95% CI
:math:`[L, U]` of :math:`\Delta = m_\ell - m_\mathrm{BCE}` (paired bootstrap over
items, hierarchical over seeds; t over seeds for the concept counts). A direction claim
(sign :math:`\sigma = \pm 1`)

- *holds* when every CI excludes 0 in the claimed direction, :math:`\sigma L > 0` and
  :math:`\sigma U > 0`, for every weighted loss and metric;
- is *contradicted* when some CI excludes 0 the other way (:math:`\sigma U < 0`);
- is *inconclusive* otherwise (some CI contains 0, or there is no CI).

Claim 1 is an equivalence test (two one-sided tests read off the CI, Schuirmann 1987):
*equivalent* when every CI lies inside :math:`[-\delta, \delta]` (``margin``
:math:`\delta`, default 0.02), *not equivalent* when some CI lies entirely outside it,
*inconclusive* otherwise.

**The old sign test** (:func:`claims_from_table`, kept as the ``sign_holds`` column): a
claim holds when every weighted loss moves the seed-mean numbers the claimed way by any
amount (claim 1: :math:`\max_\ell |m_\ell - m_\mathrm{BCE}| \le \delta`). It is
also the only verdict the paper's own Tables 1 and 2 allow (single numbers, no CI), so
the paper's verdict (claims 3 and 4) uses it; claims 1 and 2 are shown in the paper
only as bars (Fig. 2). When BCE or every weighted loss is missing, or a stage has not
run, the verdict is *no data* and the evidence says what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from imbalens.study.labels import (
    WEIGHTED_LOSSES,
    loss_label,
    metric_label,
    model_label,
    ordered,
    task_label,
)
from imbalens.study.results import GridResults, loss_table, paper_loss_table
from imbalens.study.stats import N_BOOT, format_ci, grid_uncertainty, summary_rows

Verdict = tuple[bool | None, str]
CiVerdict = tuple[str, str, str]
"""(verdict, evidence, reason)."""


@dataclass(frozen=True)
class Claim:
    """One claim: its id, the sentence shown in the book, and how to check it.

    Attributes:
        metrics: (metric, claimed sign) pairs; sign +1 up, -1 down, 0 "about equal".
        kind: a key of :data:`VERDICT_RULES` (``direction`` or ``equivalence``).
        check: the old sign test on a seed-mean loss table.
    """

    name: str
    text: str
    check: Callable[[pd.DataFrame, float], Verdict]
    metrics: tuple[tuple[str, int], ...] = ()
    kind: str = "direction"


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
            (("auroc", 0), ("ap", 0)),
            "equivalence",
        ),
        Claim(
            "probability_up",
            "weighted losses raise the mean predicted probability",
            lambda sub, tol: _direction(sub, (("mean_prob", +1),)),
            (("mean_prob", +1),),
        ),
        Claim(
            "alignment_up",
            "weighted losses raise IoBB and lower IoR",
            lambda sub, tol: _direction(sub, (("iobb", +1), ("ior", -1))),
            (("iobb", +1), ("ior", -1)),
        ),
        Claim(
            "concepts_up",
            "weighted losses raise concept counts (Disjoint, Unique)",
            lambda sub, tol: _direction(sub, (("disjoint", +1), ("unique", +1))),
            (("disjoint", +1), ("unique", +1)),
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


# ----------------------------------------------------------------------------- CI verdicts
def _ci_text(loss: str, row: pd.Series) -> str:
    """``WBCE +0.031 [+0.012, +0.050]``, plus the t-interval when there are several seeds."""
    text = f"{loss_label(loss)} {format_ci(row['diff'], row['ci_lo'], row['ci_hi'], signed=True)}"
    n = row.get("n_seeds")
    boot = pd.notna(row.get("diff_lo"))
    if boot and pd.notna(n) and n > 1 and pd.notna(row.get("diff_t_lo")):
        t_ci = format_ci(row["diff"], row["diff_t_lo"], row["diff_t_hi"], signed=True)
        text += f" (t over {int(n)} seeds: {t_ci.split(' ', 1)[1]})"
    return text


def _ci_rows(rows: pd.DataFrame, metrics: tuple[str, ...]) -> tuple[list[str], str]:
    """Weighted losses with a difference for every metric, or the reason there are none."""
    have = rows.dropna(subset=["value"])
    for m in metrics:
        losses = set(have.loc[have["metric"] == m, "loss"])
        if "bce" not in losses:
            return [], f"no BCE value of {metric_label(m)}"
    ok = [
        loss
        for loss in WEIGHTED_LOSSES
        if all(((m, loss) in rows.index) and pd.notna(rows.loc[(m, loss), "diff"]) for m in metrics)
    ]
    if not ok:
        return [], f"no weighted loss (WBCE/Focal/CB-Focal) with {'/'.join(metrics)}"
    return ok, ""


def _method_note(rows: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    methods = rows.loc[rows["metric"].isin(metrics), "method"].dropna().unique()
    return f" | CI method: {'; '.join(str(m) for m in methods)}" if len(methods) else ""


def _direction_ci(
    rows: pd.DataFrame, signs: tuple[tuple[str, int], ...], margin: float
) -> CiVerdict:
    """holds / contradicted / inconclusive from the difference CIs (module docstring)."""
    metrics = tuple(m for m, _ in signs)
    losses, why = _ci_rows(rows, metrics)
    if not losses:
        return "no data", why, why
    parts, support, against, unsure = [], 0, [], []
    for m, sign in signs:
        items = []
        for loss in losses:
            row = rows.loc[(m, loss)]
            lo, hi = sign * row["ci_lo"], sign * row["ci_hi"]
            text = _ci_text(loss, row)
            items.append(text)
            if pd.isna(lo) or pd.isna(hi):
                unsure.append(f"{loss_label(loss)}'s {metric_label(m)} has no CI")
            elif min(lo, hi) > 0:
                support += 1
            elif max(lo, hi) < 0:
                against.append(f"{text} excludes 0 the other way ({metric_label(m)})")
            else:
                unsure.append(f"{text} includes 0 ({metric_label(m)})")
        arrow = "up" if sign > 0 else "down"
        parts.append(f"{m} {arrow}, loss - BCE: " + ", ".join(items))
    total = len(losses) * len(signs)
    if against:
        verdict, reason = "contradicted", "; ".join(against)
    elif support == total:
        verdict, reason = "holds", "every CI excludes 0 in the claimed direction"
    else:
        verdict, reason = "inconclusive", "; ".join(unsure)
    evidence = "; ".join(parts) + f" | {support}/{total} CIs exclude 0 as claimed"
    return verdict, evidence + _method_note(rows, metrics) + _absent(losses), reason


def _equivalence_ci(
    rows: pd.DataFrame, signs: tuple[tuple[str, int], ...], margin: float
) -> CiVerdict:
    """equivalent / not equivalent / inconclusive: every CI inside +-margin (TOST)."""
    metrics = tuple(m for m, _ in signs)
    losses, why = _ci_rows(rows, metrics)
    if not losses:
        return "no data", why, why
    parts, inside, outside, unsure = [], 0, [], []
    for m in metrics:
        items = []
        for loss in losses:
            row = rows.loc[(m, loss)]
            lo, hi = row["ci_lo"], row["ci_hi"]
            text = _ci_text(loss, row)
            items.append(text)
            label = f"{text} ({metric_label(m)})"
            if pd.isna(lo) or pd.isna(hi):
                unsure.append(f"{loss_label(loss)}'s {metric_label(m)} has no CI")
            elif -margin <= lo and hi <= margin:
                inside += 1
            elif lo > margin or hi < -margin:
                outside.append(f"{label} lies outside ±{margin:g}")
            else:
                unsure.append(f"{label} crosses ±{margin:g}")
        parts.append(f"{m}, loss - BCE: " + ", ".join(items))
    total = len(losses) * len(metrics)
    if outside:
        verdict, reason = "not equivalent", "; ".join(outside)
    elif inside == total:
        verdict, reason = "equivalent", f"every CI lies inside ±{margin:g}"
    else:
        verdict, reason = "inconclusive", "; ".join(unsure)
    evidence = "; ".join(parts) + f" | {inside}/{total} CIs inside ±{margin:g}"
    return verdict, evidence + _method_note(rows, metrics) + _absent(losses), reason


def _absent(losses: list[str]) -> str:
    gone = [loss_label(x) for x in WEIGHTED_LOSSES if x not in losses]
    return f"; not compared: {', '.join(gone)}" if gone else ""


VERDICT_RULES: dict[str, Callable[..., CiVerdict]] = {
    "direction": _direction_ci,
    "equivalence": _equivalence_ci,
}
"""Claim kind -> verdict rule (rows, (metric, sign) pairs, margin) -> (verdict, evidence, reason)."""


def ci_verdict(claim: Claim, rows: pd.DataFrame, margin: float = 0.02) -> CiVerdict:
    """The three-valued verdict of ``claim`` on one (model, task)'s uncertainty rows.

    ``rows`` are :func:`imbalens.study.stats.summary_rows` of one (model, task), indexed
    by (metric, loss). Returns (verdict, evidence, reason in words).
    """
    return VERDICT_RULES[claim.kind](rows, claim.metrics, margin)


def claims_from_uncertainty(unc: pd.DataFrame, margin: float = 0.02) -> pd.DataFrame:
    """Every claim's CI verdict per (model, task) of a :func:`grid_uncertainty` frame.

    Columns: model, task, claim, verdict, evidence, reason.
    """
    rows = []
    summary = summary_rows(unc)
    for (model, task), sub in summary.groupby(["model", "task"], sort=False):
        indexed = sub.set_index(["metric", "loss"], drop=False)
        for claim in CLAIMS.values():
            verdict, evidence, reason = ci_verdict(claim, indexed, margin)
            rows.append(
                {"model": model, "task": task, "claim": claim.name, "verdict": verdict,
                 "evidence": evidence, "reason": reason}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "task", "claim", "verdict", "evidence", "reason"])


def evaluate_claims(
    results: GridResults,
    margin: float = 0.02,
    uncertainty: pd.DataFrame | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """The claims table of a grid: CI verdicts, the old sign test, and the paper's verdict.

    Args:
        results: a loaded grid (:func:`imbalens.study.results.load_grid`).
        margin: equivalence margin of claim 1 (and the old sign test's tolerance).
        uncertainty: :func:`imbalens.study.stats.grid_uncertainty` of ``results``
            (computed with ``n_boot``/``seed`` when not given).

    Returns:
        One row per (model, task, claim) present in the grid: model, task, claim,
        statement, verdict (holds | contradicted | inconclusive | equivalent | not
        equivalent | no data), evidence (the CIs), reason (the verdict in words),
        sign_holds (the old sign test: bool, or ``None``), sign_evidence, paper_holds,
        paper_evidence (the paper's sign test; it has no CIs).
    """
    if margin < 0:
        raise ValueError(f"margin (tolerance) must be >= 0, got {margin}")
    unc = (
        grid_uncertainty(results, n_boot=n_boot, seed=seed) if uncertainty is None else uncertainty
    )
    ours = claims_from_table(loss_table(results), margin).rename(
        columns={"holds": "sign_holds", "evidence": "sign_evidence"}
    )
    ci = claims_from_uncertainty(unc, margin)
    ours = ours.merge(ci, on=["model", "task", "claim"], how="left")
    ours["verdict"] = ours["verdict"].fillna("no data")
    ours["evidence"] = ours["evidence"].fillna(ours["sign_evidence"])
    ours["reason"] = ours["reason"].fillna("")
    paper = claims_from_table(paper_loss_table(), margin).rename(
        columns={"holds": "paper_holds", "evidence": "paper_evidence"}
    )
    merged = ours.merge(paper.drop(columns="statement"), on=["model", "task", "claim"], how="left")
    untabulated = ~merged["claim"].isin(PAPER_TABULATED)
    merged.loc[untabulated, "paper_holds"] = None
    merged.loc[untabulated, "paper_evidence"] = "claimed in the text; shown only as bars (Fig. 2)"
    no_paper = merged["paper_evidence"].isna()
    merged.loc[no_paper, "paper_evidence"] = "the paper has no such (model, task)"
    for col in ("sign_holds", "paper_holds"):
        merged[col] = merged[col].astype(object).where(merged[col].notna(), None)
    order = {name: i for i, name in enumerate(CLAIMS)}
    models = {m: i for i, m in enumerate(ordered(merged["model"], ("t-densenet", "resnet50")))}
    tasks = {"multilabel": 0, "binary": 1}
    merged = merged.sort_values(
        ["task", "model", "claim"],
        key=lambda c: c.map({"claim": order, "model": models}.get(str(c.name), tasks)).fillna(2),
    )
    return merged[CLAIM_COLUMNS].reset_index(drop=True)


CLAIM_COLUMNS = [
    "model", "task", "claim", "statement", "verdict", "evidence", "reason",
    "sign_holds", "sign_evidence", "paper_holds", "paper_evidence",
]  # fmt: skip
"""Columns of :func:`evaluate_claims`."""


def verdict_text(holds: bool | None) -> str:
    """The sign test's verdict in words: ``"holds"``, ``"does not hold"`` or ``"no data"``."""
    if holds is None or (isinstance(holds, float) and math.isnan(holds)):
        return "no data"
    return "holds" if holds else "does not hold"


AGREES: dict[str, set[str]] = {
    "holds": {"holds", "equivalent"},
    "does not hold": {"contradicted", "not equivalent"},
    "no data": {"no data"},
}
"""Sign-test verdict -> the CI verdicts that say the same."""


def verdict_changes(claims: pd.DataFrame) -> list[str]:
    """One sentence per claim whose verdict changed once the CIs are in, then a count.

    Computed from :func:`evaluate_claims` (the sign test vs the CI verdict and its reason).
    """
    out = []
    for row in claims.itertuples():
        old = verdict_text(row.sign_holds)
        if row.verdict in AGREES[old]:
            continue
        out.append(
            f"{model_label(row.model)}, {task_label(row.task)}, "
            f"“{row.statement}”: the sign test said *{old}*; with 95% CIs it is "
            f"**{row.verdict}** ({row.reason})."
        )
    kept = len(claims) - len(out)
    out.append(f"{len(out)} of {len(claims)} verdicts changed, {kept} stayed the same.")
    return out


VERDICT_COLOURS: dict[str, str] = {
    "holds": "#cde6f5",  # light Okabe-Ito blue
    "equivalent": "#cde6f5",
    "does not hold": "#fbe0c2",  # light Okabe-Ito orange
    "contradicted": "#fbe0c2",
    "not equivalent": "#fbe0c2",
    "inconclusive": "#f7f3c6",  # light yellow
    "no data": "#ececec",
    "not in a table": "#ececec",
}
"""Background of a verdict cell in the book (the text says it too)."""

VIEW_VERDICTS = ["verdict (95% CI)", "sign test (old)", "paper (no CI)"]
"""The verdict columns of :func:`claims_view`."""


def claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """:func:`evaluate_claims`'s frame with display labels, indexed (task, model, claim).

    Columns: verdict (95% CI), evidence (CIs), sign test (old), paper (no CI), evidence
    (paper: single numbers, sign test).
    """
    view = pd.DataFrame(
        {
            "task": claims["task"].map(task_label),
            "model": claims["model"].map(model_label),
            "claim": claims["statement"],
            "verdict (95% CI)": claims["verdict"],
            "evidence (CIs)": claims["evidence"],
            "sign test (old)": claims["sign_holds"].map(verdict_text),
            "paper (no CI)": [
                "not in a table" if claim not in PAPER_TABULATED else verdict_text(h)
                for claim, h in zip(claims["claim"], claims["paper_holds"], strict=True)
            ],
            "evidence (paper: single numbers)": claims["paper_evidence"],
        }
    )
    return view.set_index(["task", "model", "claim"])


def style_claims(view: pd.DataFrame) -> Any:
    """A pandas ``Styler`` of :func:`claims_view`: coloured verdicts, full evidence text."""
    return (
        view.style.map(
            lambda v: f"background-color: {VERDICT_COLOURS[v]}" if v in VERDICT_COLOURS else "",
            subset=[c for c in VIEW_VERDICTS if c in view.columns],
        )
        .set_properties(**{"text-align": "left", "vertical-align": "top"})
        .set_table_styles([{"selector": "td, th", "props": "padding: 3px 8px;"}])
    )


def differences_view(uncertainty: pd.DataFrame) -> pd.DataFrame:
    """The numbers the claims use, for reading: each weighted loss minus BCE, with its CI.

    From :func:`imbalens.study.stats.summary_rows` of ``uncertainty``
    (:func:`imbalens.study.stats.grid_uncertainty`), rows with a difference only, indexed
    (task, model, metric, loss) by display labels. Columns: ``loss - BCE [95% CI]`` (the
    bootstrap CI), ``t over seeds`` (the t-interval over per-seed differences, ``— (1
    seed)`` with one seed) and ``method`` (how the CI was computed: n images, n seeds).
    """
    diffs = summary_rows(uncertainty).dropna(subset=["diff"])
    view = pd.DataFrame(
        {
            "task": diffs["task"].map(task_label),
            "model": diffs["model"].map(model_label),
            "metric": diffs["metric"].map(metric_label),
            "loss": diffs["loss"].map(loss_label),
            "loss - BCE [95% CI]": [
                format_ci(d, lo, hi, signed=True)
                for d, lo, hi in zip(diffs["diff"], diffs["ci_lo"], diffs["ci_hi"], strict=True)
            ],
            "t over seeds": [
                format_ci(d, lo, hi, signed=True) if n > 1 else "— (1 seed)"
                for d, lo, hi, n in zip(
                    diffs["diff"],
                    diffs["diff_t_lo"],
                    diffs["diff_t_hi"],
                    diffs["n_seeds"],
                    strict=True,
                )
            ],
            "method": diffs["method"],
        }
    )
    return view.set_index(["task", "model", "metric", "loss"])
