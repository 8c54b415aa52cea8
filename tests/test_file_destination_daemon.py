"""The file destination as a first-time user meets it, in a real daemon: `status`
names the file being written, a clean stop publishes it under its final name (and a
restart after that neither loses nor repeats a line), and the example configs
rotate every few minutes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import DaemonProcess, wait_for
from tests.support.posting import post
from tests.support.scoring import CTO

REPOSITORY = Path(__file__).resolve().parent.parent


def identify(user: str) -> dict[str, object]:
    return {"type": "identify", "userId": user, "traits": {**CTO, "email": f"{user}@initech.com"}}


def lines(directory: Path, pattern: str) -> list[str]:
    return [
        json.loads(line)["user_id"]
        for path in sorted(directory.glob(pattern))
        for line in path.read_text().splitlines()
    ]


def test_status_names_the_part_file_and_a_clean_stop_publishes_it(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon('\n[destinations.out]\ntype = "file"\npath = "out"\nmode = "realtime"\n')
    out = daemon.directory / "out"
    daemon.start()
    assert post(daemon, [identify("ann")]) == 200

    def writing() -> str | None:
        status = json.loads(
            leadsync_here("status", "--config", str(daemon.config_path), "--json").stdout
        )
        found: str | None = status["destinations"]["out"]["writing"]
        return found

    part = Path(wait_for(writing))
    assert part.parent == out
    assert part.name.startswith("out-")
    assert part.name.endswith(".jsonl.part")
    assert part.exists()
    table = leadsync_here("status", "--config", str(daemon.config_path)).stdout
    assert f"  writing {part}" in table

    assert daemon.terminate() == 0
    assert sorted(p.name for p in out.iterdir()) == [part.name.removesuffix(".part")]
    assert lines(out, "*.jsonl") == ["ann"]

    # Started again, it neither writes Ann again nor loses the next one.
    daemon.start()
    assert post(daemon, [identify("bob")]) == 200
    wait_for(lambda: lines(out, "*.part") == ["bob"])
    assert daemon.terminate() == 0
    assert not list(out.glob("*.part"))
    assert lines(out, "*.jsonl") == ["ann", "bob"]


def test_the_example_config_and_the_embedded_default_rotate_every_five_minutes(
    tmp_path: Path,
) -> None:
    expected = "files in ./var/scores, a new one every 5m00s or 64 MiB"
    example = leadsync_here("check-config", "--config", str(REPOSITORY / "daemon.toml"))
    assert expected in example.stdout, example.stderr
    embedded = leadsync("check-config", cwd=tmp_path)
    assert expected in embedded.stdout, embedded.stderr
