"""Reload: what a new config changes, and how the zones are swapped without losing any."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from daemon import config, reload
from daemon.config import Settings
from daemon.stages import Env


def settings(tmp_path: Path, zones: list[str], **extra: Any) -> Settings:
    for name in zones:
        (tmp_path / name).mkdir(exist_ok=True)
    data = {"zones": [{"name": n, "path": n} for n in zones], **extra}
    return config.parse(data, tmp_path, {})


def test_plan_names_added_removed_changed_and_restart_sections(tmp_path: Path) -> None:
    """Zones added, removed and changed are told apart; other differing sections need a
    restart."""
    old = settings(tmp_path, ["a", "b", "c"])
    new = settings(tmp_path, ["b", "c", "d"], pipeline={"workers": 3})
    new = new.model_copy(update={"zones": (new.zones[0].model_copy(update={"settle_ms": 5}),
                                           *new.zones[1:])})
    plan = reload.plan(old, new)
    assert (plan.added, plan.removed, plan.changed) == (["d"], ["a"], ["b"])
    assert plan.need_restart == ["pipeline"] and plan.zones_changed


def test_same_file_changes_nothing(tmp_path: Path) -> None:
    """Reloading an unchanged file is a no-op."""
    plan = reload.plan(settings(tmp_path, ["a"]), settings(tmp_path, ["a"]))
    assert not plan.zones_changed and not plan.need_restart


def test_apply_keeps_removed_zones_for_their_files(tmp_path: Path) -> None:
    """After a zone is removed, the ledger claims only the new zones, and files still on their
    way from the removed one find their settings; a zone added back is current again."""
    env = cast(Env, SimpleNamespace(settings=settings(tmp_path, ["a", "b"]), retired={},
                                    ledger=SimpleNamespace(zones=["a", "b"])))
    env.zone = Env.zone.__get__(env)  # type: ignore[method-assign]
    reload.apply(env, settings(tmp_path, ["b"]).zones)
    assert env.ledger.zones == ["b"] and env.zone("a").name == "a"
    reload.apply(env, settings(tmp_path, ["a", "b"]).zones)
    assert env.retired == {} and [z.name for z in env.settings.zones] == ["a", "b"]
