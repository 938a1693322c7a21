"""The executor seam: a local Ray (loopback, 2 CPUs) gives the local pool's customer copies byte for byte and its
lab records; shared inputs travel once per worker; failed tasks are retried or reported with their inputs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import tracemark as tm
from tracemark.attacks import FineTune, InputTransform, Prune, Quantize, ThiefData, WeightNoise
from tracemark.errors import DatasetError
from tracemark.executor import ExecutorError, LocalExecutor, RayExecutor, TaskFailedError, executor_from
from tracemark.fingerprint import FingerprintScheme, TrainSettings, fanout
from tracemark.lab import build_null_profile, run_suite
from tests.cli_runs import cli_error

# a short fine-tune over a small pool: these tests compare executors, they do not need a strong code
SHORT = TrainSettings(lr=3e-3, max_steps=300, target_code_accuracy=0.15, max_clean_drop=0.02, pool_size=400,
                      validation_size=200)
CUSTOMERS = ["acme", "globex", "initech"]


@pytest.fixture(scope="module")
def ray_executor():
    """One local Ray for the module (loopback, 2 CPUs, no dashboard), shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="WARNING")
    try:
        yield RayExecutor()  # uses the running instance and leaves it to this fixture
    finally:
        ray.shutdown()


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def _facts(report) -> dict:
    return {k: v for k, v in report.to_dict().items() if k not in ("seconds", "model_path")}


def test_ray_makes_the_local_pools_copies_byte_for_byte(models, ray_executor, tmp_path):
    scheme = FingerprintScheme.from_key(models.key)
    seen: dict[str, list[str]] = {"local": [], "ray": []}
    with LocalExecutor(2) as pool:
        local = fanout(models.marked, scheme, CUSTOMERS, models.data, tmp_path / "local", settings=SHORT, executor=pool,
                       on_copy=lambda r: seen["local"].append(r.customer))
    on_ray = fanout(models.marked, scheme, CUSTOMERS, models.data, tmp_path / "ray", settings=SHORT,
                    executor=ray_executor, on_copy=lambda r: seen["ray"].append(r.customer))
    local_files, ray_files = _hashes(tmp_path / "local"), _hashes(tmp_path / "ray")
    assert sorted(local_files) == [f"{c}.safetensors" for c in sorted(CUSTOMERS)]
    assert ray_files == local_files
    assert len(set(local_files.values())) == 3  # three different copies, not one written three times
    assert [_facts(r) for r in on_ray.copies] == [_facts(r) for r in local.copies]
    assert all(r.steps > 0 for r in on_ray.copies)
    # each copy was handed on (to the registry, in the CLI) as it completed
    assert sorted(seen["ray"]) == sorted(seen["local"]) == sorted(CUSTOMERS)
    assert on_ray.workers == 2


def test_a_lab_suite_on_ray_gives_the_local_results_table(models, ray_executor):
    data = models.data
    thief = ThiefData(x=data.x_train[:300], y=data.y_train[:300], seed=3)
    attacks = [Prune(0.5, "magnitude"), Quantize(), WeightNoise(0.1), InputTransform("blur", 0.7),
               FineTune("FTLL", n_samples=300, epochs=1)]
    test = (data.x_test, data.y_test)
    local = run_suite(attacks, models.marked, models.key, test, thief, suite="tiny", dataset="digits", workers=2)
    on_ray = run_suite(attacks, models.marked, models.key, test, thief, suite="tiny", dataset="digits",
                       executor=ray_executor)

    def table(result) -> list[dict]:  # every record, without its timings
        rows = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in result.records]
        for row in rows:
            row["info"] = {k: v for k, v in (row["info"] or {}).items() if k != "seconds"}
        return rows

    assert table(on_ray) == table(local)
    assert [s.__dict__ for s in on_ray.summary()] == [s.__dict__ for s in local.summary()]
    assert {r.verdict for r in local.records} >= {"copy"}
    assert on_ray.config["executor"] == "ray" and local.config["executor"] == "local"


def test_reference_models_trained_on_ray_are_the_local_pools(models, ray_executor, tmp_path):
    options = dict(n_models=3, archs=("mlp", "lenet"), epochs=1, train_size=300, first_seed=7)
    with LocalExecutor(2) as pool:
        local, local_models = build_null_profile(models.data, [models.key], folder=tmp_path / "local", executor=pool,
                                                 **options)
    on_ray, ray_models = build_null_profile(models.data, [models.key], folder=tmp_path / "ray", executor=ray_executor,
                                            **options)
    assert [r.sha256 for r in on_ray.references] == [r.sha256 for r in local.references]
    assert len({r.sha256 for r in local.references}) == 3 and [r.seed for r in local.references] == [7, 8, 9]
    assert on_ray.matches == local.matches
    for a, b in zip(local_models, ray_models):
        assert all(np.array_equal(x.detach().numpy(), y.detach().numpy()) for x, y in zip(a.parameters(), b.parameters()))
    # the files were written here, as each model completed, and are what the profile records
    for ref in on_ray.references:
        assert hashlib.sha256((tmp_path / "ray" / ref.file).read_bytes()).hexdigest() == ref.sha256


class Counted:
    """A shared input that appends a line to ``log`` each time it is unpickled (once per process that loads it)."""

    def __init__(self, log: str, payload: np.ndarray):
        self.log, self.payload = log, payload

    def __reduce__(self):
        return _load_counted, (self.log, self.payload)


def _load_counted(log: str, payload: np.ndarray) -> Counted:
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return Counted(log, payload)


def _payload_sum(shared: Counted, i: int) -> float:
    return float(shared.payload[i].sum())


def test_a_shared_input_travels_once_per_worker_not_per_task(ray_executor, tmp_path):
    log = tmp_path / "loads.txt"
    log.touch()
    payload = np.arange(40 * 1000, dtype=np.float32).reshape(40, 1000)
    handle = ray_executor.put(Counted(str(log), payload))
    try:
        sums = ray_executor.map(_payload_sum, range(40), shared=handle)
    finally:
        ray_executor.release(handle)
    assert sums == [float(payload[i].sum()) for i in range(40)]
    loads = log.read_text().split()
    assert 1 <= len(loads) <= 2 and len(set(loads)) == len(loads)  # 2 workers at most, never 40 tasks
    with LocalExecutor(2) as pool:  # forked workers read the driver's copy: nothing is unpickled
        shared = pool.put(Counted(str(log), payload))
        assert pool.map(_payload_sum, range(40), shared=shared) == sums
    assert log.read_text().split() == loads


def _layout(shared: dict, name: str) -> tuple:
    return shared[name].strides, float(shared[name][:5].sum())


def test_shared_arrays_keep_their_memory_layout_on_ray(models, ray_executor):
    x = models.data.x_train  # load_dataset's 1×8×8 images: a channel stride numpy's pickling would not keep
    standard = np.ascontiguousarray(x[:10]).copy()
    handle = ray_executor.put({"x": x, "standard": standard})
    try:
        got = ray_executor.map(_layout, ["x", "standard"], shared=handle)
    finally:
        ray_executor.release(handle)
    assert x.strides[1] != standard.strides[1]  # the two layouts differ on the axis of length 1
    assert got == [(x.strides, float(x[:5].sum())), (standard.strides, float(standard[:5].sum()))]


def _crash_once(folder: str, i: int) -> int:
    """Kills its worker process on the first attempt at item 2 (a lost worker), answers ``i * i`` otherwise."""
    marker = Path(folder) / f"attempt-{i}"
    with open(marker, "a") as handle:
        handle.write("x")
    if i == 2 and marker.read_text() == "x":
        os._exit(1)
    return i * i


def _fail(folder: str, i: int) -> int:
    """Item 1: bad input (a tracemark error, not retried); item 3: an error each time (retried, then reported)."""
    with open(Path(folder) / f"attempt-{i}", "a") as handle:
        handle.write("x")
    if i == 1:
        raise DatasetError(f"item {i} is unreadable")
    if i == 3:
        raise RuntimeError("flaky node")
    return i


@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_lost_worker_is_retried_and_a_failing_task_is_reported_with_its_inputs(where, ray_executor, tmp_path):
    runner = LocalExecutor(2, retries=2) if where == "local" else ray_executor
    crash = tmp_path / "crash"
    crash.mkdir()
    shared = runner.put(str(crash))
    assert runner.map(_crash_once, range(4), shared=shared) == [0, 1, 4, 9]
    assert (crash / "attempt-2").read_text() == "xx"  # the lost attempt, then the one that finished
    runner.release(shared)

    fail = tmp_path / "fail"
    fail.mkdir()
    kept: list[int] = []
    shared = runner.put(str(fail))
    with pytest.raises(TaskFailedError) as info:
        runner.map(_fail, range(5), shared=shared, describe=lambda i: f"item #{i}", on_result=lambda i, r: kept.append(r))
    runner.release(shared)
    failures = {f.task: f for f in info.value.failures}
    assert set(failures) == {"item #1", "item #3"}
    assert failures["item #1"].attempts == 1 and "DatasetError: item 1 is unreadable" in failures["item #1"].error
    assert failures["item #3"].attempts == runner.retries + 1 == 3 and "RuntimeError: flaky node" in failures["item #3"].error
    assert (fail / "attempt-3").read_text() == "xxx"
    assert sorted(kept) == [0, 2, 4] and info.value.finished == 3  # the others finished and were handed on
    assert "2 of 5 tasks failed (3 finished and were kept): item #1" in str(info.value)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ExecutorError, match=r"pip install tracemark\[ray\]"):
        executor_from("ray")
    with pytest.raises(ExecutorError, match="choose one of local, ray"):
        executor_from("dask")


def test_an_unknown_executor_is_one_error_line_before_any_work(capsys, monkeypatch, tmp_path):
    line = cli_error(capsys, monkeypatch, "fingerprint", "--key", str(tmp_path / "k"), "--model", str(tmp_path / "m"),
                     "--customers", str(tmp_path / "c.txt"), "--out", str(tmp_path / "out"), "--executor", "dask")
    assert "ExecutorError: unknown executor 'dask'; choose one of local, ray" in line
    assert not (tmp_path / "out").exists()


def test_fingerprint_cli_on_ray_reads_a_memmap_data_folder(models, ray_executor, tmp_path):
    from tracemark.cli import fingerprint as fingerprint_cli
    from tracemark.data.ondisk import write_memmap
    from tracemark.fingerprint import Registry

    app = typer.Typer(pretty_exceptions_enable=False)
    fingerprint_cli.register(app)
    data = models.data
    folder = write_memmap(tmp_path / "digits-memmap", np.ascontiguousarray(data.x_train), data.y_train)
    tm.save_model(models.base, tmp_path / "base.safetensors")
    models.key.save(tmp_path / "master.key")
    (tmp_path / "customers.txt").write_text("acme\nglobex\n")
    out = tmp_path / "copies"
    result = CliRunner().invoke(app, ["fingerprint", "--key", str(tmp_path / "master.key"),
                                      "--model", str(tmp_path / "base.safetensors"), "--customers",
                                      str(tmp_path / "customers.txt"), "--out", str(out), "--data", str(folder),
                                      "--executor", "ray", "--lr", "3e-3", "--max-steps", "300", "--code-accuracy",
                                      "0.05", "--max-clean-drop", "0.02", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert [c["customer"] for c in made["copies"]] == ["acme", "globex"]
    records = {r.id: r for r in Registry.open(out / "registry.sqlite").records()}
    for copy in made["copies"]:
        assert records[copy["customer"]].model_sha256 == copy["model_sha256"]
        assert hashlib.sha256(Path(copy["model_path"]).read_bytes()).hexdigest() == copy["model_sha256"]
