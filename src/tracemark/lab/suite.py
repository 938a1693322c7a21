"""Attack suites and running them (one task per attack, on a local pool or a Ray cluster) under the SoK protocol."""

from __future__ import annotations

import platform
import resource
import sys
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from tracemark.attacks import Distill, Extract, FineTune, InputTransform, Prune, Quantize, WeightNoise
from tracemark.attacks.base import Attack, ThiefData, as_target
from tracemark.data.batches import dataset_of, is_stream
from tracemark.data.devices import resolve_device
from tracemark.executor import Executor, on_device
from tracemark.keys.key import WatermarkKey
from tracemark.lab.errors import LabError
from tracemark.lab.protocol import DEFAULT_BUDGET_POINTS, AttackRecord, TestSet, accuracy_on, check_shapes, evaluate_attack
from tracemark.lab.results import SuiteResult
from tracemark.targets.base import Target
from tracemark.verification.null import NullModel
from tracemark.verification.verify import DEFAULT_ALPHA, verify

if TYPE_CHECKING:
    from tracemark.evidence.protocol import Evidence

SUITES = ("quick", "standard")


def make_suite(name: str, thief_size: int, ood_size: int | None = None) -> list[Attack]:
    """The attacks of suite ``name`` for a thief holding ``thief_size`` images (``ood_size`` out-of-domain).

    ``quick`` has one or two light attacks of each kind (for tests and smoke runs);
    ``standard`` sweeps every kind at the strengths the SoK and the issue ask for.
    Without out-of-domain images the out-of-domain extraction is left out.
    """
    n = int(thief_size)
    if name == "quick":
        attacks: list[Attack] = [
            FineTune("FTLL", n_samples=n, epochs=1), FineTune("RTAL", n_samples=n, epochs=2),
            Prune(0.5, "magnitude"), Prune(0.2, "random"), Quantize(), WeightNoise(0.1),
            Distill(n_queries=n, epochs=3), Extract(n_queries=n, epochs=3),
            InputTransform("blur", 0.7), InputTransform("bitdepth", 3),
        ]
        if ood_size:
            attacks.append(Extract(pool="ood", n_queries=ood_size, epochs=3))
        return attacks
    if name != "standard":
        raise LabError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    attacks = [FineTune(mode, n_samples=n, epochs=5, lr=5e-4) for mode in ("FTLL", "FTAL", "RTLL", "RTAL")]
    attacks += [FineTune("FTAL", n_samples=n, epochs=5, lr=2e-3), FineTune("RTAL", n_samples=n, epochs=5, lr=2e-3)]
    attacks += [Prune(r, "magnitude") for r in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)]
    attacks += [Prune(r, "random") for r in (0.05, 0.1, 0.2, 0.3, 0.5)]
    attacks += [Quantize()]
    attacks += [WeightNoise(s) for s in (0.05, 0.1, 0.2, 0.3, 0.5)]
    attacks += [Distill("small_cnn", n_queries=n, epochs=10), Distill("lenet", n_queries=n, epochs=10)]
    attacks += [Extract("small_cnn", n_queries=n, epochs=10), Extract("lenet", n_queries=n, epochs=10)]
    if ood_size:
        attacks += [Extract("small_cnn", pool="ood", n_queries=ood_size, epochs=10)]
    attacks += [InputTransform("noise", s) for s in (0.05, 0.1, 0.2)]
    attacks += [InputTransform("blur", s) for s in (0.5, 0.8, 1.2)]
    attacks += [InputTransform("resample", f) for f in (1.5, 2.0)]
    attacks += [InputTransform("bitdepth", b) for b in (4, 2, 1)]
    return attacks


def versions() -> dict[str, str]:
    """Versions of what produced a result."""
    import tracemark

    return {"tracemark": tracemark.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run_index(shared: dict[str, Any], index: int) -> AttackRecord:
    """One task: attack ``index`` of the suite, judged by the protocol."""
    s = shared
    return evaluate_attack(s["attacks"][index], s["victim"], s["key"], s["test"], s["thief"],
                           marked_accuracy=s["marked_accuracy"], null=s["null"], alpha=s["alpha"],
                           budget_points=s["budget"], evidence=s["evidence"])


def run_suite(
    attacks: Sequence[Attack],
    victim: nn.Module | Target,
    key: WatermarkKey,
    test: TestSet,
    thief: ThiefData,
    *,
    suite: str = "custom",
    dataset: str = "",
    null: NullModel | None = None,
    alpha: float = DEFAULT_ALPHA,
    budget_points: float = DEFAULT_BUDGET_POINTS,
    workers: int = 1,
    show_progress: bool = False,
    config: dict | None = None,
    executor: Executor | None = None,
    evidence: Sequence[Evidence] = (),
) -> SuiteResult:
    """Run every attack against ``victim`` under the SoK protocol and collect a :class:`SuiteResult`.

    Each attack is one task of ``executor`` (default: a :class:`~tracemark.executor.LocalExecutor`
    of ``workers`` forked processes, one torch thread each; a
    :class:`~tracemark.executor.RayExecutor` gives the same records); the victim, key, test set and
    thief's pools are put once. A failed attack is retried by the executor and, if it still fails,
    named in the :class:`~tracemark.executor.TaskFailedError` raised at the end. When the
    victim is only a Target, attacks that need its weights are skipped and listed in the config.
    ``test`` is ``(x, y)`` arrays or a Dataset/DataLoader of ``(x, y)``; the thief's pools may be
    Datasets (see :class:`~tracemark.attacks.ThiefData`, whose ``device`` the attacks train on).
    Pools and test images of another shape than the key's are refused before any attack runs.
    On a CUDA or MPS device the attacks run one after another in this process.
    ``evidence``: other kinds of evidence (a :class:`~tracemark.lineage.LineageEvidence`, say) tested on every
    stolen model beside the trigger mark and combined with it; each record then says which kinds survived.
    """
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    check_shapes(key, thief, test)
    runner = on_device(executor, resolve_device(thief.device).type, workers)
    target = as_target(victim)
    marked_accuracy = accuracy_on(target, test, thief.num_workers)
    marked_trigger = verify(key, target, alpha=alpha, null=null).match_rate
    runnable = [a for a in attacks if a.access == "api" or isinstance(victim, nn.Module)]
    skipped = [a.name for a in attacks if a not in runnable]
    shared = runner.put(dict(attacks=runnable, victim=victim, key=key, test=test, thief=thief,
                             marked_accuracy=marked_accuracy, null=null, alpha=alpha, budget=budget_points,
                             evidence=tuple(evidence)))
    try:
        records = runner.map(_run_index, range(len(runnable)), shared=shared,
                             describe=lambda i: f"attack {runnable[i].name}", description=f"attacking ({suite})",
                             show_progress=show_progress)
    finally:
        runner.release(shared)
        if runner is not executor:
            runner.close()
    cfg = {"key": key.describe(), "thief": {"n_images": thief.size("in"), "labelled": thief.has_labels,
                                            "n_out_of_domain": thief.size("ood"), "seed": thief.seed},
           "n_test": len(dataset_of(test)) if is_stream(test) else len(test[0]),  # type: ignore[arg-type]
           "null": None if null is None else null.to_dict(), "workers": runner.workers,
           "executor": runner.name, "evidence": [e.kind for e in evidence],
           "skipped": skipped, **(config or {})}
    return SuiteResult(suite, dataset, marked_accuracy, marked_trigger, alpha, budget_points, cfg,
                       records, versions(), time.perf_counter() - start,
                       _cpu_seconds() - cpu_start)
