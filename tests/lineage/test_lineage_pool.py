"""The reference pool: cached, never trained twice, generation and calibration sets disjoint."""

from __future__ import annotations

import json

import pytest

from tests.lineage.conftest import small_plan
from tracemark.lineage import MemberSpec, PoolError, PoolPlan, build_pool


def test_second_build_loads_every_member_and_touches_no_file(built):
    files = sorted((built.pool_dir / "models").iterdir())
    before = {f.name: f.stat().st_mtime_ns for f in files} | {"manifest": (built.pool_dir / "manifest.json").stat().st_mtime_ns}
    pool = build_pool(built.marked, built.data, small_plan(), built.pool_dir)
    assert (pool.trained, pool.reused) == (0, len(small_plan().members)) == (0, 17)
    after = {f.name: f.stat().st_mtime_ns for f in sorted((built.pool_dir / "models").iterdir())}
    assert after | {"manifest": (built.pool_dir / "manifest.json").stat().st_mtime_ns} == before


def test_manifest_records_seeds_splits_optimisers_and_disjoint_sets(built):
    manifest = built.build.lineage.pool
    assert manifest["overlap"] == [] and len(manifest["generation_keys"]) == 9 and len(manifest["calibration_keys"]) == 8
    assert not set(manifest["generation_keys"]) & set(manifest["calibration_keys"])
    seeds = {use: {m["seed"] for m in manifest["members"] if m["use"] == use} for use in ("generation", "calibration")}
    assert not seeds["generation"] & seeds["calibration"]
    member = manifest["members"][0]
    assert {"seed", "arch", "split", "optimiser", "sha256"} <= set(member)
    assert len(member["split"]["indices_sha256"]) == 64 and member["split"]["size"] < member["split"]["of"]
    on_disk = json.loads((built.pool_dir / "manifest.json").read_text())
    assert set(manifest["generation_keys"]) | set(manifest["calibration_keys"]) <= set(on_disk["members"])


def test_plan_sharing_a_seed_between_generation_and_calibration_is_refused():
    gen = [MemberSpec("s", "generation", "extract", "mlp", 1, 0.5, 1), MemberSpec("r", "generation", "independent", "mlp", 2, 0.5, 1)]
    with pytest.raises(PoolError, match="seeds \\[2\\]"):
        PoolPlan((*gen, MemberSpec("c", "calibration", "independent", "lenet", 2, 0.7, 1)))
    with pytest.raises(PoolError, match="independent references only"):
        PoolPlan((*gen, MemberSpec("c", "calibration", "distill", "lenet", 3, 0.7, 1)))


def test_altered_cache_file_is_refused(built, tmp_path):
    import shutil

    copy = tmp_path / "pool"
    shutil.copytree(built.pool_dir, copy)
    victim = sorted((copy / "models").iterdir())[0]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 1
    victim.write_bytes(bytes(raw))
    with pytest.raises(PoolError, match="differs from the SHA-256"):
        build_pool(built.marked, built.data, small_plan(), copy)


def test_generation_and_calibration_members_train_on_disjoint_halves(built):
    from tracemark.lineage._data import split_indices

    n = len(built.data.x_train)
    plan = small_plan()
    seen = {use: set() for use in ("generation", "calibration")}
    for m in plan.members:
        seen[m.use] |= set(split_indices(n, m.fraction, m.seed, m.part).tolist())
    assert seen["generation"] and seen["calibration"] and not seen["generation"] & seen["calibration"]
    assert len(seen["generation"] | seen["calibration"]) <= n
    parts = {m["name"]: m["split"]["part"] for m in built.build.lineage.pool["members"]}
    assert {parts[m.name] for m in plan.select("calibration")} == {"b"} and {parts[m.name] for m in plan.select("generation")} == {"a"}
    with pytest.raises(PoolError, match="part must be one of"):
        PoolPlan((*plan.members[:-1], MemberSpec("c", "calibration", "independent", "lenet", 999, 0.7, 1, part="c")))
