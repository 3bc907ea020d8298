"""Results across run folders: the tables, comparisons and diagnostics of ``06_ablations``.

Everything here reads ``runs/<dataset>/<strategy>/fold<k>/`` (``metrics.json``,
``predictions.jsonl``) and never trains. Runs that a table expects but that do not exist are
shown as missing, never dropped silently.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ambinb import curation, learning, metrics, paper, results
from ambinb import perception as perception_mod
from ambinb.paths import parse_run_name, resolve_path

MAIN_METRICS = ("js", "bc", "r2", "brier")
LOWER_IS_BETTER = {"js": True, "bc": False, "r2": False, "brier": True, "kl": True, "r2_cod": False,
                   "collapse_rate": True, "entropy_corr": False}
TABLE2_ROWS = ("base", "classical", "prior", "sft", "dpo", "grpo", "grpo_z")
PRIOR = "prior"
TABLE3_ROWS = ("sft", "sft_nocot")
CROSS_SEP = "_to_"
# the paper's cross-domain setting (Table 3): trained on CREMA-D, tested on IEMOCAP; expected (shown as
# missing until run) whenever both datasets are among those 06_ablations is asked about
CROSS_DOMAIN = (("crema_d", "iemocap"),)
# the paper's Table 3 row labels -> ours (run-folder dataset names)
_PAPER_TABLE3 = {"in-domain (CREMA-D)": "crema_d", "cross-domain (IEMOCAP)": "crema_d_to_iemocap"}


def cross_name(train: str, test: str) -> str:
    """The run-folder dataset part of a cross-domain run: ``cross_name("crema_d", "iemocap")`` ->
    ``"crema_d_to_iemocap"`` (``runs/crema_d_to_iemocap/sft/fold0/``)."""
    return f"{train}{CROSS_SEP}{test}"


def split_cross(name: str) -> tuple[str, str] | None:
    """``(train, test)`` of a cross-domain run-folder name, None for an in-domain one.

    Example: ``split_cross("crema_d_to_iemocap")`` -> ``("crema_d", "iemocap")``;
    ``split_cross("toy")`` -> None.

    Raises:
        ValueError: a name with ``_to_`` but an empty side (``"_to_iemocap"``) or two of them.
    """
    if CROSS_SEP not in name:
        return None
    train, _, test = name.partition(CROSS_SEP)
    if not train or not test or CROSS_SEP in test:
        raise ValueError(f"run folder {name!r}: a cross-domain name is <train>{CROSS_SEP}<test>")
    return train, test


def setting_label(name: str) -> str:
    """How Table 3 names a run-folder dataset: ``"toy (in-domain)"``, ``"crema_d → iemocap (cross-domain)"``."""
    pair = split_cross(name)
    return f"{name} (in-domain)" if pair is None else f"{pair[0]} → {pair[1]} (cross-domain)"


def cross_domains(run_root: str, datasets: list[str]) -> list[str]:
    """The cross-domain run-folder names Table 3 shows: every ``<train>_to_<test>`` folder under ``run_root``
    (a run that exists is never left out), plus the paper's pairs (``CROSS_DOMAIN``) whose two datasets are
    both in ``datasets`` (shown as missing until they run).

    Example: with ``runs/crema_d_to_iemocap/`` absent, ``cross_domains("runs", ["iemocap", "crema_d"])`` ->
    ``["crema_d_to_iemocap"]`` and ``cross_domains("runs", ["toy"])`` -> ``[]``.
    """
    root = resolve_path(run_root)
    found = {p.name for p in root.glob(f"*{CROSS_SEP}*") if p.is_dir() and split_cross(p.name)} \
        if root.exists() else set()
    expected = {cross_name(a, b) for a, b in CROSS_DOMAIN if a in datasets and b in datasets}
    return sorted(found | expected)


def _test_dataset(path: Path, m: dict) -> str:
    """The dataset a run was tested on: ``params.test_dataset``, else the ``<test>`` of a cross-domain
    folder name, else the folder's dataset; a disagreement between the two raises naming the file."""
    folder = path.parts[-4]
    pair = split_cross(folder)
    declared = (m.get("params") or {}).get("test_dataset") or ""
    if pair and declared and declared != pair[1]:
        raise ValueError(f"{path}: folder {folder!r} says tested on {pair[1]!r}, params.test_dataset says "
                         f"{declared!r}")
    return declared or (pair[1] if pair else folder)


def run_metrics_files(run_root: str) -> list[tuple[Path, int, int]]:
    """``(metrics.json path, fold, seed)`` of every test run under ``run_root`` (``<dataset>/<strategy>/fold<k>``
    or ``fold<k>-seed<s>``, :func:`ambinb.paths.parse_run_name`), sorted; validation runs are not among them."""
    found = []
    for path in sorted(resolve_path(run_root).glob("*/*/fold*/metrics.json")):
        parsed = parse_run_name(path.parts[-2])
        if parsed is not None:
            found.append((path, *parsed))
    return found


def collect(run_root: str = "runs") -> pd.DataFrame:
    """One row per finished run: dataset (the run-folder name), strategy, fold, seed, folder, train_dataset
    and test_dataset (the two sides of a ``<train>_to_<test>`` folder, else the dataset twice), every
    metric, and the fold's prior metrics (columns ``prior_<metric>``)."""
    rows = []
    for path, fold, seed in run_metrics_files(run_root):
        try:
            m = json.loads(path.read_text())
        except ValueError:
            continue  # a run still being written is not finished
        pair = split_cross(path.parts[-4])
        row = {"dataset": path.parts[-4], "strategy": path.parts[-3], "fold": fold, "seed": seed,
               "folder": str(path.parent), "train_dataset": pair[0] if pair else path.parts[-4],
               "test_dataset": _test_dataset(path, m)}
        row.update({k: v for k, v in m["metrics"].items()})
        row.update({f"prior_{k}": v for k, v in m.get("prior", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


BUDGET_KEYS = ("epochs", "max_steps", "batch_size", "lr", "lr_scale")


def budgets(run_root: str = "runs") -> pd.DataFrame:
    """How long each finished run trained: one row per (dataset, strategy), the folds pooled.

    Columns: ``folds``, the requested budget (``epochs``, ``max_steps``, ``batch_size`` and the effective
    ``lr`` = lr x lr_scale, from each run's recorded parameters), the optimizer ``steps`` taken and
    ``train_wall_s``, the wall seconds from the run's start to the end of training, loading included
    (means over folds; 0 for strategies that do not train). Folds that were run with
    different budgets show each value, joined by ``/``.
    """
    rows = []
    for path, _, _ in run_metrics_files(run_root):
        try:
            m = json.loads(path.read_text())
        except ValueError:
            continue
        params, train = m.get("params", {}), m.get("train", {})
        rows.append({"dataset": path.parts[-4], "strategy": path.parts[-3],
                     **{k: params.get(k) for k in BUDGET_KEYS},
                     "steps": train.get("steps", 0), "train_wall_s": train.get("seconds", 0.0)})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["lr"] = df["lr"].astype(float) * df["lr_scale"].astype(float)

    def joined(values: pd.Series) -> str:
        return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in dict.fromkeys(values))

    out = df.groupby(["dataset", "strategy"], sort=False).agg(
        folds=("steps", "size"), epochs=("epochs", joined), max_steps=("max_steps", joined),
        batch_size=("batch_size", joined), lr=("lr", joined), steps=("steps", "mean"),
        train_wall_s=("train_wall_s", "mean"))
    trains = out["steps"] > 0
    out.loc[~trains, ["epochs", "max_steps", "batch_size", "lr"]] = "-"
    return out.round({"steps": 1, "train_wall_s": 1})


def with_prior_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the training-prior predictor as a strategy named ``prior`` (one row per dataset and fold)."""
    if runs.empty:
        return runs
    prior_cols = [c for c in runs.columns if c.startswith("prior_")]
    prior = runs.groupby(["dataset", "fold"], as_index=False).first()
    keep = [c for c in ("dataset", "fold", "train_dataset", "test_dataset") if c in prior.columns]
    prior = prior[[*keep, *prior_cols]].rename(columns=lambda c: c.removeprefix("prior_"))
    prior["strategy"] = PRIOR
    return pd.concat([runs, prior], ignore_index=True)


def summary(runs: pd.DataFrame, strategies: list[str], datasets: list[str], folds: list[int],
            metric_names: tuple[str, ...] = MAIN_METRICS) -> pd.DataFrame:
    """Mean and sd over every finished run per (dataset, strategy), folds and seeds alike, with ``n_folds``
    (distinct folds) out of ``len(folds)`` expected, ``n_seeds`` (seeds per fold, at most) and ``n_runs``.

    A strategy with no finished fold appears with NaN and ``n_folds`` 0 (shown as missing).
    """
    runs = with_prior_rows(runs)
    out = []
    for ds in datasets:
        for st in strategies:
            sel = runs[(runs.dataset == ds) & (runs.strategy == st) & runs.fold.isin(folds)] if len(runs) else runs
            seeds = sel.groupby("fold").size().max() if len(sel) and "seed" in sel else int(bool(len(sel)))
            row = {"dataset": ds, "strategy": st, "n_folds": sel.fold.nunique() if len(sel) else 0,
                   "n_seeds": int(seeds), "n_runs": len(sel), "expected": len(folds)}
            for m in metric_names:
                vals = sel[m].to_numpy(dtype=float) if len(sel) else np.array([])
                row[m] = vals.mean() if vals.size else np.nan
                row[f"{m}_sd"] = vals.std(ddof=1) if vals.size > 1 else np.nan
            out.append(row)
    return pd.DataFrame(out).set_index(["dataset", "strategy"])


def pooled_predictions(run_root: str, dataset: str, strategy: str, folds: list[int],
                       seeds: list[int] | None = None) -> pd.DataFrame:
    """Predictions of every finished run of one (dataset, strategy) in ``folds`` (and ``seeds``; None: every
    seed), concatenated with ``fold`` and ``seed`` columns."""
    frames = []
    base = resolve_path(run_root) / dataset / strategy
    runs = sorted(p for p in (parse_run_name(f.name) for f in base.glob("fold*")) if p) if base.exists() else []
    for k, s in runs:
        folder = base / (f"fold{k}" + (f"-seed{s}" if s else ""))
        if k in folds and (seeds is None or s in seeds) and results.is_finished(folder):
            frames.append(results.read_predictions(folder).assign(fold=k, seed=s))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reasoning(run_root: str, dataset: str, strategies: list[str], folds: list[int]) -> pd.DataFrame:
    """Does the answer follow the reasoning, and is the reasoning right? One row per strategy that wrote CoTs.

    Each generated think block is read back with the offline curator's reader
    (:func:`ambinb.curation.read_template_cot`: the distribution its synthesis states), giving ``q``.
    Columns: ``n`` completions, ``parsed`` (share the reader could read), ``js_cot_gt`` = JS(q, p_gt)
    (how right the reasoning is), ``js_hat_cot`` = JS(p_hat, q) (how closely the read-out follows the
    reasoning), ``agree`` (share where argmax p_hat = argmax q), and ``js_hat_gt`` = JS(p_hat, p_gt) on
    the same parsed rows. Only think blocks in the template's wording parse (the toy corpus, or a
    curator that writes like it); a strategy whose blocks never parse shows ``parsed`` 0 and NaN.
    """
    rows = []
    for strategy in strategies:
        preds = pooled_predictions(run_root, dataset, strategy, folds)
        wrote_cot = "completion" in preds and preds["completion"].astype(str).str.contains("</think>").any()
        if preds.empty or not wrote_cot:
            continue
        folder = resolve_path(run_root) / dataset / strategy / f"fold{int(preds['fold'].iloc[0])}"
        classes = results.read_metrics(folder)["classes"]
        q, keep = [], []
        for text in preds["completion"].astype(str):
            read = curation.read_template_cot(text.split("</think>")[0] + "</think>", classes) if "</think>" in text \
                else None
            keep.append(read is not None)
            if read is not None:
                q.append(read / read.sum())
        row = {"strategy": strategy, "n": len(preds), "parsed": float(np.mean(keep))}
        if q:
            q_arr = np.stack(q)
            p_gt = np.stack(preds["p_gt"])[np.array(keep)]
            p_hat = np.stack(preds["p_hat"])[np.array(keep)]
            row.update({"js_cot_gt": float(metrics.js(p_gt, q_arr).mean()),
                        "js_hat_cot": float(metrics.js(q_arr, p_hat).mean()),
                        "agree": float(np.mean(q_arr.argmax(1) == p_hat.argmax(1))),
                        "js_hat_gt": float(metrics.js(p_gt, p_hat).mean())})
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy") if rows else pd.DataFrame()


def gold_thinks(run_root: str, dataset: str, prompt_version: str) -> dict[str, str]:
    """``utt_id -> think block`` of every record of the curated CoT store (``<run_root>/<dataset>/curation/
    cot.jsonl``) for ``prompt_version`` that holds one, accepted or not: its audio step words the measured
    prosody whichever attempt it is. Empty when there is no store."""
    curated = curation.load_curated(resolve_path(run_root) / dataset / "curation" / curation.STORE_FILE, prompt_version)
    return {str(u): c for u, c in zip(curated["utt_id"], curated["cot"], strict=True)
            if isinstance(c, str) and c.strip()}


def finished_folds(run_root: str, dataset: str, strategy: str) -> list[int]:
    """The folds of ``<run_root>/<dataset>/<strategy>/`` with a finished evaluation, in order."""
    base = resolve_path(run_root) / dataset / strategy
    found = [int(p.name[4:]) for p in base.glob("fold*") if p.name[4:].isdigit() and results.is_finished(p)]
    return sorted(found)


def perception(run_root: str, dataset: str, folds: list[int], strategy: str = "base") -> pd.DataFrame:
    """Does the model hear the prosody? :func:`ambinb.perception.agreement` of the directions its generated
    think blocks state (``predictions.jsonl`` of each finished fold) against the curated think block of the
    same utterance (:func:`gold_thinks`, the run's ``prompt_version``), the folds' held-out utterances pooled.

    Indexed ``(aspect, dimension)``; columns ``agree``, ``chance``, ``n``, ``unstated``. Utterances the
    store lacks are left out (curation covers a fold's training rows, so a test fold has gold blocks once
    another fold's training run curated them). Empty when no fold finished or none wrote completions.
    """
    preds = pooled_predictions(run_root, dataset, strategy, folds)
    if preds.empty or "completion" not in preds:
        return pd.DataFrame()
    folder = resolve_path(run_root) / dataset / strategy / f"fold{int(preds['fold'].iloc[0])}"
    gold = gold_thinks(run_root, dataset, str(results.read_metrics(folder)["params"]["prompt_version"]))
    kept = preds[preds["utt_id"].astype(str).isin(gold)]
    stated = [perception_mod.read_directions(str(c)) for c in kept["completion"]]
    truth = [perception_mod.read_directions(gold[str(u)]) for u in kept["utt_id"]]
    return perception_mod.agreement(stated, truth)


def pooled_ci(run_root: str, dataset: str, strategy: str, folds: list[int], n_boot: int = 1000,
              seed: int = 0) -> dict[str, tuple[float, float]]:
    """Bootstrap 95 % CIs of every metric over all held-out utterances of the finished folds; an utterance's
    rows under several seeds are drawn together (:func:`ambinb.metrics.cluster_indices`)."""
    preds = pooled_predictions(run_root, dataset, strategy, folds)
    if preds.empty:
        return {}
    # a fold with more finished seeds than another keeps its lowest ones: every utterance, one group size
    n_seeds = preds.groupby("fold")["seed"].nunique().min()
    preds = preds[preds.groupby("fold")["seed"].rank(method="dense") <= n_seeds]
    groups = preds["fold"].astype(str) + "/" + preds["utt_id"].astype(str)
    return metrics.bootstrap_ci(np.stack(preds.p_gt), np.stack(preds.p_hat), n_boot=n_boot, seed=seed,
                                groups=groups.to_numpy())


def format_table(table: pd.DataFrame, metric_names: tuple[str, ...] = MAIN_METRICS,
                 paper: pd.DataFrame | None = None, cis: dict | None = None) -> pd.DataFrame:
    """Cells ``mean ± sd`` (``[lo, hi]`` CI when given), the best strategy per dataset in bold
    (Markdown ``**``), ``missing`` where no fold finished, and the paper's value beside ours; a ``runs``
    column (``2 folds x 3 seeds``) when some row pools several seeds."""
    cells = pd.DataFrame(index=table.index)
    for m in metric_names:
        col = []
        for (ds, st), row in table.iterrows():
            if row["n_folds"] == 0:
                col.append("missing")
                continue
            text = f"{row[m]:.3f}" + ("" if np.isnan(row[f"{m}_sd"]) else f" ± {row[f'{m}_sd']:.3f}")
            ci = (cis or {}).get((ds, st), {}).get(m)
            if ci:
                text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            if row["n_folds"] < row["expected"]:
                text += f" ({int(row['n_folds'])}/{int(row['expected'])} folds)"
            col.append(text)
        cells[m] = col
        for ds in table.index.get_level_values(0).unique():
            vals = table.loc[ds, m].dropna()
            if vals.empty:
                continue
            best = vals.idxmin() if LOWER_IS_BETTER[m] else vals.idxmax()
            cells.loc[(ds, best), m] = f"**{cells.loc[(ds, best), m]}**"
        if paper is not None:
            cells[f"{m} (paper)"] = [f"{paper.loc[i, m]:.2f}" if i in paper.index else "" for i in table.index]
    if "n_seeds" in table and (table["n_seeds"] > 1).any():  # what each mean ± sd is over
        cells["runs"] = [f"{int(r.n_folds)} folds x {int(r.n_seeds)} seeds" if r.n_seeds > 1 else
                         f"{int(r.n_folds)} folds" for r in table.itertuples()]
    return cells


def paired_tests(run_root: str, dataset: str, strategies: list[str], folds: list[int], metric: str = "js",
                 n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """For each pair of strategies with predictions on the same utterances: the mean per-utterance
    difference of ``metric`` (a - b) with a paired bootstrap 95 % CI over utterances, and a paired t-test
    over folds. A strategy run under several seeds enters with each utterance's metric averaged over its
    seeds (the seeds pooled; ``seeds`` says how many), so the CI covers both sampling and seeds."""
    per_utt, n_seeds = {}, {}
    for st in strategies:
        preds = pooled_predictions(run_root, dataset, st, folds)
        if not preds.empty:
            values = getattr(metrics, metric)(np.stack(preds.p_gt), np.stack(preds.p_hat))
            frame = pd.DataFrame({"utt_id": preds.utt_id, "fold": preds.fold, "seed": preds.seed, metric: values})
            per_utt[st] = frame.groupby(["utt_id", "fold"], as_index=False)[metric].mean()
            n_seeds[st] = int(frame.groupby("fold")["seed"].nunique().max())
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in combinations(per_utt, 2):
        both = per_utt[a].merge(per_utt[b], on=["utt_id", "fold"], suffixes=("_a", "_b"))
        if both.empty:
            continue
        diff = (both[f"{metric}_a"] - both[f"{metric}_b"]).to_numpy()
        boot = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
        by_fold = both.groupby("fold")[[f"{metric}_a", f"{metric}_b"]].mean()
        p_fold = (stats.ttest_rel(by_fold.iloc[:, 0], by_fold.iloc[:, 1]).pvalue
                  if len(by_fold) > 1 else np.nan)
        rows.append({"a": a, "b": b, f"mean {metric}(a) - {metric}(b)": diff.mean(),
                     "ci95_low": np.quantile(boot, 0.025), "ci95_high": np.quantile(boot, 0.975),
                     "folds": len(by_fold), "seeds": f"{n_seeds[a]}/{n_seeds[b]}",
                     "paired t-test p (folds)": p_fold, "utterances": len(diff)})
    return pd.DataFrame(rows)


def sampled_trends(run_root: str, datasets: list[str], folds: list[int]) -> pd.DataFrame:
    """Did each on-policy run's own samples improve? One row per finished run that logged them: dataset,
    strategy, fold, seed, the quantity (:data:`ambinb.learning.SAMPLED`: DPO's ``rollout_js``, GRPO's
    ``reward_mean``), its means over the first and the last fifth of the steps (the run's
    ``metrics.json`` ``train`` entries), the change and ``improved``."""
    rows = []
    for path, fold, seed in run_metrics_files(run_root):
        dataset, strategy = path.parts[-4], path.parts[-3]
        if dataset not in datasets or fold not in folds:
            continue
        train = json.loads(path.read_text()).get("train", {})
        for key, higher in learning.SAMPLED.values():
            if f"{key}_first_fifth" in train:
                tr = learning.Trend(key, float(train[f"{key}_first_fifth"]), float(train[f"{key}_last_fifth"]),
                                    higher)
                rows.append({"dataset": dataset, "strategy": strategy, "fold": fold, "seed": seed, "key": key,
                             "first_fifth": tr.first, "last_fifth": tr.last, "change": tr.change,
                             "improved": tr.improved})
    return pd.DataFrame(rows)


def sampled_verdicts(trends: pd.DataFrame) -> list[str]:
    """One sentence per (dataset, strategy) of :func:`sampled_trends`: in how many runs the samples improved.

    Example: ``"toy/dpo: rollout_js improved in 6 of 6 runs (mean change -0.021)"``.
    """
    if trends.empty:
        return []
    out = []
    for (ds, st, key), g in trends.groupby(["dataset", "strategy", "key"], sort=False):
        out.append(f"{ds}/{st}: {key} improved in {int(g.improved.sum())} of {len(g)} runs "
                   f"(mean change {g.change.mean():+.3f})")
    return out


def reliability(preds: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Predicted against annotated probability: every (utterance, class) cell binned by p_hat, with the
    mean p_hat, mean p_gt and count per bin (a perfectly calibrated model lies on the diagonal)."""
    p_hat = np.stack(preds.p_hat).ravel()
    p_gt = np.stack(preds.p_gt).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p_hat, edges) - 1, 0, bins - 1)
    df = pd.DataFrame({"bin": which, "p_hat": p_hat, "p_gt": p_gt})
    return df.groupby("bin").agg(p_hat=("p_hat", "mean"), p_gt=("p_gt", "mean"), n=("p_gt", "size")).reset_index()


def disagreements(run_root: str, dataset: str, strategies: list[str], folds: list[int], k: int = 5) -> pd.DataFrame:
    """The ``k`` utterances where the strategies' predicted distributions differ most
    (largest pairwise JS between any two strategies), with each strategy's p_hat and the p_gt."""
    table = None
    for st in strategies:
        preds = pooled_predictions(run_root, dataset, st, folds, seeds=[0])
        if preds.empty:
            continue
        part = preds[["utt_id", "fold", "p_gt", "p_hat"]].rename(columns={"p_hat": st})
        table = part if table is None else table.merge(part.drop(columns="p_gt"), on=["utt_id", "fold"])
    if table is None or table.empty:
        return pd.DataFrame()
    present = [s for s in strategies if s in table.columns]
    spread = np.zeros(len(table))
    for a, b in combinations(present, 2):
        spread = np.maximum(spread, metrics.js(np.stack(table[a]), np.stack(table[b])))
    table["max_pairwise_js"] = spread
    return table.sort_values("max_pairwise_js", ascending=False).head(k).reset_index(drop=True)


def existing_strategies(run_root: str, dataset: str) -> list[str]:
    """Strategies with at least one fold folder under ``<run_root>/<dataset>``."""
    base = resolve_path(run_root) / dataset
    return sorted(p.name for p in base.iterdir() if p.is_dir() and any(p.glob("fold*"))) if base.exists() else []


def folders(run_root: str) -> list[Path]:
    """Every run folder with a finished evaluation."""
    return [path.parent for path, _, _ in run_metrics_files(run_root)]


def table2(run_root: str, datasets: list[str], folds: list[int], n_boot: int = 1000) -> pd.DataFrame:
    """Table 2: base, classical, prior, every other evaluated baseline, SFT, DPO, GRPO, GRPO_z by JS, BC,
    R2, Brier per dataset (mean ± sd over folds, pooled bootstrap CI), best in bold, the paper beside."""
    runs = collect(run_root)
    extra = sorted({s for ds in datasets for s in existing_strategies(run_root, ds)}
                   - set(TABLE2_ROWS) - {"sft_ce", "sft_nocot", "dpo_ce"})
    strategies = [*TABLE2_ROWS[:3], *extra, *TABLE2_ROWS[3:]]
    table = summary(runs, strategies, datasets, folds)
    cis = {(ds, st): pooled_ci(run_root, ds, st, folds, n_boot) for ds in datasets for st in strategies
           if st != PRIOR}
    return format_table(table, paper=paper.table2(), cis=cis)


def paper_table3() -> pd.DataFrame:
    """The paper's Table 3 indexed like :func:`table3` (``(setting label, strategy)``)."""
    rows = {(setting_label(_PAPER_TABLE3[setting]), st): vals for (setting, st), vals in paper.TABLE3.items()}
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(paper.METRICS))
    df.index = pd.MultiIndex.from_tuples(df.index, names=["setting", "strategy"])
    return df


def table3(run_root: str, datasets: list[str], folds: list[int], n_boot: int = 1000) -> pd.DataFrame:
    """Table 3: SFT with CoT + KL (``sft``) against KL only (``sft_nocot``), in-domain (each dataset) and
    cross-domain (run folders ``<train>_to_<test>``, see :func:`cross_domains`), mean ± sd over folds with
    pooled bootstrap CIs, best per setting in bold, the paper's numbers beside (CREMA-D and CREMA-D → IEMOCAP).

    Rows are indexed ``(setting, strategy)`` with settings labelled by :func:`setting_label`.
    """
    names = [*datasets, *cross_domains(run_root, datasets)]
    table = summary(collect(run_root), list(TABLE3_ROWS), names, folds)
    cis = {(ds, st): pooled_ci(run_root, ds, st, folds, n_boot) for ds in names for st in TABLE3_ROWS}
    cells = format_table(table, cis=cis)
    labels = {ds: setting_label(ds) for ds in names}
    index = pd.MultiIndex.from_tuples([(labels[ds], st) for ds, st in cells.index], names=["setting", "strategy"])
    cells.index = index
    paper = paper_table3()
    for m in MAIN_METRICS:
        cells[f"{m} (paper)"] = [f"{paper.loc[i, m]:.2f}" if i in paper.index else "" for i in cells.index]
    return cells
