"""Issue 15, item 12: what a new user meets gets one line naming the problem and what to do (exit 2)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import tracemark as tm
from tests.servers import free_port
from tracemark.cli import build_app
from tracemark.targets.base import Answers, Target

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
app = build_app()
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TRACEMARK_")}


def tracemark(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point, as a new user runs it: no terminal, no tracemark variables."""
    return subprocess.run([sys.executable, "-m", "tracemark", *args], cwd=cwd, env={**CLEAN_ENV, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert ``proc`` failed with exit 2 and printed exactly one line, an ``error:`` naming each needle."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stdout + proc.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def flat_help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


class CountingTarget(Target):
    """A local suspect that answers class 0 to everything and counts the inputs it is given."""

    description = "counting target"
    input_shape = (1, 8, 8)
    num_classes = 10

    def __init__(self) -> None:
        self.inputs_given = 0

    def _answer(self, x: np.ndarray) -> Answers:
        self.inputs_given += len(x)
        return Answers(np.zeros(len(x), dtype=np.int64))


def test_key_new_unknown_kind_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(tracemark("key", "new", "--kind", "blob", "--out", "a.key", cwd=tmp_path), "--kind blob", "abstract")
    assert not (tmp_path / "a.key").exists(), line


def test_key_new_single_labels_without_target_is_one_line(tmp_path: Path) -> None:
    one_line_error(tracemark("key", "new", "--labels", "single", "--out", "b.key", cwd=tmp_path), "--labels single", "--target")


def test_key_new_encrypt_without_terminal_names_the_variable(tmp_path: Path) -> None:
    one_line_error(tracemark("key", "new", "--encrypt", "--out", "c.key", cwd=tmp_path), "$TRACEMARK_KEY_PASSPHRASE")
    assert not (tmp_path / "c.key").exists()


def test_data_dir_is_documented_and_train_shows_progress_with_a_sized_default(tmp_path: Path) -> None:
    for command in (("train",), ("key", "new"), ("embed",), ("robustness",), ("fingerprint",)):
        assert "$TRACEMARK_DATA_DIR" in flat_help(*command) and "shared/data" in flat_help(*command), command
    assert "TRACEMARK_DATA_DIR" in (ROOT / "README.md").read_text()

    from tracemark.cli.models import default_epochs

    assert default_epochs(1437) == 20 and default_epochs(60_000) == 2  # digits: seconds; MNIST: not 20 epochs
    proc = tracemark("train", "--out", "m.safetensors", "--epochs", "1", cwd=tmp_path)  # stderr is not a terminal
    assert proc.returncode == 0, proc.stderr
    progress = re.findall(r"^training: (\d+)% \(\d+/\d+\), \d+ s$", proc.stderr, re.M)
    assert len(progress) >= 5 and progress[-1] == "100", proc.stderr


def test_single_target_key_reports_every_input_sent(digits: tm.ImageData) -> None:
    key = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, label_mode="single",
                                   target_label=0, n_triggers=100, seed=bytes(range(32)))
    target = CountingTarget()
    verdict = tm.verify(key, target)
    assert target.inputs_given == 200  # 100 triggers and their 100 unstamped controls
    assert verdict.queries == 100 and verdict.inputs_sent == 200
    assert "inputs sent: 200" in str(verdict) and verdict.to_dict()["inputs_sent"] == 200


@pytest.mark.parametrize("where", ["unresolvable", "refused"])
def test_unreachable_url_fails_fast_without_retries(tmp_path: Path, where: str) -> None:
    key_file = tm.WatermarkKey.generate("abstract", num_classes=10, input_shape=(1, 8, 8)).save(tmp_path / "k.key")
    url = "http://nonexistent.invalid:8000/" if where == "unresolvable" else f"http://127.0.0.1:{free_port()}/predict"
    started = time.monotonic()
    result = runner.invoke(app, ["verify", "--key", str(key_file), "--url", url, "--transcript", str(tmp_path / "t.json")])
    assert time.monotonic() - started < 3.0  # was 16 attempts (4 batches x 4) and about 27 s
    from tracemark.errors import TargetNotFoundError

    assert isinstance(result.exception, TargetNotFoundError), result.output
    assert ("does not resolve" if where == "unresolvable" else "connection refused") in str(result.exception)
    assert "not retried" in str(result.exception)
    if where == "unresolvable":  # and the real entry point prints it as one line
        one_line_error(tracemark("verify", "--key", str(key_file), "--url", url, cwd=tmp_path), "does not resolve")


def test_failed_embed_offers_its_options_and_writes_nothing(tmp_path: Path) -> None:
    model = tm.save_model(tm.build_model("small_cnn", (1, 8, 8), 10, seed=0), tmp_path / "base.safetensors")
    key_file = tm.WatermarkKey.generate("abstract", num_classes=10, input_shape=(1, 8, 8)).save(tmp_path / "k.key")
    out = tmp_path / "marked.safetensors"
    args = ["embed", "--model", str(model), "--key", str(key_file), "--out", str(out), "--max-steps", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and not out.exists(), result.output
    assert "nothing written" in result.output and "--lr" in result.output and "--keep-failed" in result.output
    assert "--lr" in flat_help("embed")
    result = runner.invoke(app, [*args, "--lr", "1e-4", "--keep-failed"])
    assert result.exit_code == 1 and out.exists() and "wrote" in result.output


def test_names_and_figures_agree() -> None:
    robustness = typer.main.get_command(app).commands["robustness"]
    data = {opt: p for p in robustness.params for opt in p.opts}
    assert data["--data"].name == "data" and data["--dataset"].hidden  # the old name still works, unlisted
    assert "--data" in flat_help("robustness") and "--dataset" not in flat_help("robustness")

    readme = re.search(r"make demo .*\(about (\d+) s", (ROOT / "README.md").read_text())
    demo_help = re.search(r"\(about (\d+) s", flat_help("demo"))
    assert readme and demo_help and readme.group(1) == demo_help.group(1)


def test_max_queries_too_few_says_raise_max_queries(digits: tm.ImageData) -> None:
    key = tm.WatermarkKey.generate("content", images=digits.x_train, labels=digits.y_train, n_triggers=100, seed=bytes(range(32)))
    verdict = tm.verify(key, CountingTarget(), max_queries=9)
    assert verdict.verdict == "inconclusive"
    assert "--max-queries" in verdict.note and "100 triggers" in verdict.note and "use more triggers" not in verdict.note


def test_responses_alerts_reads_the_alerts_db(tmp_path: Path) -> None:
    from tracemark.extraction.monitor import Alert, AlertStore

    alerts_db = tmp_path / "alerts.sqlite"
    AlertStore(str(alerts_db)).add(Alert("2026-01-01T00:00:00Z", "c1", "acme", "coverage", 5000, 0.9, 0.5))
    result = runner.invoke(app, ["responses", "alerts", "--alerts-db", str(alerts_db), "--audit-db", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 0, result.output
    assert "acme" in result.output and "coverage" in result.output


def test_bench_serving_sustained_zero_keeps_the_comparison(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    process = SimpleNamespace(terminate=lambda: None, wait=lambda timeout=None: 0)
    monkeypatch.setattr(bench, "start", lambda kind, size, directory: (process, f"http://127.0.0.1:1/{kind}"))
    monkeypatch.setattr(bench, "wrk", lambda url, body, token, seconds, connections, workdir, *content_type: {
        "p50": 0.001, "p99": 0.002, "rps": 900.0, "requests": 9000, "non2xx": 0, "socket_errors": 0})
    monkeypatch.setattr(bench.shutil, "which", lambda name: "/usr/bin/wrk")
    monkeypatch.setattr(sys, "argv", ["serving.py", "--models", "toy", "--rounds", "1", "--seconds", "1", "--connections", "1",
                                      "--sustained", "0"])
    bench.main()
    out = capsys.readouterr().out
    assert "**protected ÷ bare** | **1.00×**" in out and "Sustained run: skipped" in out
