"""Offline study of lineage selection rules, from the answers ``bench/lineage.py --study`` saved (study.npz).

Every rule picks at most ``--n`` candidates using the generation surrogates' and references' answers only (what
``generate`` may see); the held-out calibration references then give the worst-reference bound (as
``tracemark.lineage.calibrate``), and the stolen and independent models of the run are scored against it at alpha
1e-9. No stolen or independent model's answer takes part in any choice, so the figures are what the rule would
have shown had it been the default.

    .venv/bin/python bench/lineage_study.py bench/out/lineage/fashion-mnist/study.npz --n 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tracemark.lineage.calibrate import DEFAULT_CONFIDENCE
from tracemark.verification.stats import binomial_pvalue, clopper_pearson_upper

ALPHA = 1e-9


def _hits(answers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return answers == labels[None, :]


def rules(study: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each rule's ranking score per candidate (``-inf``: not eligible); higher is kept first."""
    labels, conf = study["labels"], study["conferrability"]
    s_hit, r_hit = _hits(study["surrogates"], labels), _hits(study["references"], labels)
    names = [str(n) for n in study["surrogate_names"]]
    extract = np.array(["extract" in n for n in names])
    distill = np.array(["distill" in n for n in names])
    s_frac, r_frac = s_hit.mean(0), r_hit.mean(0)
    none_ref = r_hit.sum(0) == 0
    by_conf = lambda keep: np.where(keep, conf, -np.inf)  # noqa: E731
    out = {
        "default: >= 50% surrogates, no reference; by conferrability": by_conf((s_frac >= 0.5) & none_ref),
        ">= 30% surrogates, no reference": by_conf((s_frac >= 0.3) & none_ref),
        ">= 70% surrogates, no reference": by_conf((s_frac >= 0.7) & none_ref),
        ">= 50% surrogates, <= 1 reference": by_conf((s_frac >= 0.5) & (r_hit.sum(0) <= 1)),
        "ranked by surrogate share - reference share (no filter)": s_frac - r_frac + 1e-6 * conf,
    }
    if extract.any():
        e_frac = s_hit[extract].mean(0)
        out[">= 50% extraction surrogates, no reference"] = by_conf((e_frac >= 0.5) & none_ref)
        out["ranked by extraction-surrogate share, no reference"] = np.where(none_ref, e_frac + 1e-6 * conf, -np.inf)
    if distill.any() and extract.any():
        d_frac = s_hit[distill].mean(0)
        both = (s_hit[extract].mean(0) >= 0.5) & (d_frac >= 0.5) & none_ref
        out[">= 50% of extraction and of distillation surrogates, no reference"] = by_conf(both)
    return out


def evaluate(study: dict[str, np.ndarray], score: np.ndarray, n: int) -> dict:
    """Pick the top ``n`` eligible candidates by ``score`` and test every stolen and independent model."""
    order = [i for i in np.argsort(-score, kind="stable") if np.isfinite(score[i])][:n]
    chosen = np.array(order, dtype=np.int64)
    labels = study["labels"][chosen]
    cal = _hits(study["calibration"][:, chosen], labels).sum(1)
    rate = clopper_pearson_upper(int(cal.max()), len(chosen), DEFAULT_CONFIDENCE) if len(chosen) else 1.0
    attacks = _hits(study["attacks"][:, chosen], labels).sum(1)
    innocents = _hits(study["innocents"][:, chosen], labels).sum(1)
    p = lambda m: binomial_pvalue(int(m), len(chosen), rate)  # noqa: E731
    return {"kept": len(chosen), "calibration_max": int(cal.max()) if len(chosen) else 0, "rate": rate,
            "attacks": [(int(m), p(m)) for m in attacks], "innocent_max": int(innocents.max()) if len(chosen) else 0,
            "innocent_copies": int(sum(p(m) <= ALPHA for m in innocents))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    with np.load(args.study) as f:
        study = {k: f[k] for k in f.files}
    names = [str(a) for a in study["attack_names"]]
    print(f"{len(study['labels'])} candidates; {len(study['surrogates'])} surrogates, {len(study['references'])} generation "
          f"references, {len(study['calibration'])} calibration references, {len(names)} attacks, "
          f"{len(study['innocents'])} independents\n")
    header = ["rule", "kept", "cal. max", "bound"] + names + ["independents: most matches", "independent copies"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rule, score in rules(study).items():
        r = evaluate(study, score, args.n)
        cells = [f"{m} ({p:.0e}){' **copy**' if p <= ALPHA else ''}" for m, p in r["attacks"]]
        print(f"| {rule} | {r['kept']} | {r['calibration_max']} | {r['rate']:.3f} | " + " | ".join(cells)
              + f" | {r['innocent_max']} | {r['innocent_copies']} |")


if __name__ == "__main__":
    main()
