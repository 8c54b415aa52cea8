"""The scoring commands as an operator runs them: `leadsync model check|deploy|history`,
`leadsync scoring run`, `leadsync score-csv`, and the scores in `profile` and
`check-config`. Real files and databases in tmp_path; a subprocess where the
command line itself matters, `daemon.cli.main` in process where it adds nothing."""

from __future__ import annotations

import csv
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from actors.scoring import bulk
from actors.scoring.model import example
from daemon.cli import main
from storage.sqlite import SqliteStorage
from tests.support.cli import leadsync, leadsync_here
from tests.support.daemon_process import DaemonProcess, free_port, wait_for
from tests.support.graph import Harness
from tests.support.posting import send

EXAMPLE = example().text
CTO = {"title": "CTO", "company_size": 200, "industry": "Software", "email": "ann@initech.com"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def model_file(path: Path, version: str, text: str = EXAMPLE) -> Path:
    path.write_text(text.replace('version = "example-1"', f'version = "{version}"'))
    return path


def config_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path / "var"}"\n{extra}')
    return path


def line_of(path: Path, text: str, occurrence: int = 1) -> int:
    numbers = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return numbers[occurrence - 1]


# --- model check ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "wrong", "problem"),
    [
        # The 2nd [[fit.rules]]: an unclosed group.
        (
            '"(?i)\\\\b(director|manager|lead)\\\\b"',
            '"(director|manager"',
            "fit.rules[1].regex: not a valid regular expression",
        ),
        # The 3rd: an operator that does not exist.
        ("min = 50", "at_least = 50", "at_least: unknown key"),
    ],
)
def test_model_check_names_the_file_line_and_key_of_a_broken_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str, wrong: str, problem: str
) -> None:
    assert broken in EXAMPLE
    path = model_file(tmp_path / "broken.toml", "broken-1", EXAMPLE.replace(broken, wrong, 1))
    code, out, err = run(
        capsys, "model", "check", str(path), "--config", str(config_file(tmp_path))
    )
    assert code == 65
    assert out == ""
    assert err.startswith(f"leadsync: {path}:{line_of(path, wrong)}: fit.rules")
    assert problem in err


def test_model_check_without_a_database_validates_and_says_there_is_nothing_to_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = model_file(tmp_path / "ours.toml", "ours-1")
    code, out, err = run(
        capsys, "model", "check", str(path), "--config", str(config_file(tmp_path))
    )
    assert (code, err) == (0, "")
    assert f"{path}: OK, model ours-1 (8 fit rules, 7 event weights)" in out
    assert f"no database at {tmp_path / 'var' / 'leadsync.db'}" in out


def table(out: str) -> dict[str, tuple[int, int]]:
    """`label   active   candidate` rows of model check's output."""
    rows = {}
    for line in out.splitlines():
        if found := re.fullmatch(r"(\S.*?)\s{3,}([\d,]+)\s{3,}([\d,]+)", line):
            rows[found[1]] = (int(found[2].replace(",", "")), int(found[3].replace(",", "")))
    return rows


async def test_model_check_compares_the_fit_of_the_current_profiles_with_the_active_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    (tmp_path / "var").mkdir()
    async with Harness(tmp_path / "var" / "leadsync.db") as graph:
        code, out, _ = run(
            capsys,
            "model",
            "check",
            str(model_file(tmp_path / "a.toml", "a")),
            "--config",
            str(config),
        )
        assert code == 0
        assert "no profiles in" in out
        await graph.send(
            {"type": "identify", "userId": "ann", "traits": CTO},  # 35+25+20+20 = 100
            {"type": "identify", "userId": "bob", "traits": {**CTO, "email": "b@gmail.com"}},  # 70
            {
                "type": "identify",
                "userId": "cat",
                "traits": {"title": "Engineering Manager", "email": "cat@acme.io"},
            },  # 20+20 = 40
            # dan's traits come from his account: 20 (industry) + 25 (size) = 45
            {"type": "identify", "userId": "dan", "traits": {"plan": "free"}},
            {
                "type": "group",
                "userId": "dan",
                "groupId": "acme",
                "traits": {"industry": "SaaS", "employees": 300},
            },
            {"type": "page", "anonymousId": "anon-eve", "name": "Pricing"},  # 0
        )
        await graph.apply()
    # The candidate asks more for "very good": bob's 70 becomes "good".
    stricter = model_file(
        tmp_path / "stricter.toml",
        "stricter-1",
        EXAMPLE.replace('"very good" = 70', '"very good" = 80'),
    )
    code, out, err = run(capsys, "model", "check", str(stricter), "--config", str(config))
    assert (code, err) == (0, "")
    assert "the fit of 5 profiles in" in out
    assert "example-1 (active)" in out  # nothing deployed yet: the example is what scores
    assert "stricter-1 (this file)" in out
    counts = table(out)
    assert {name: counts[name] for name in ("very good", "good", "medium", "low")} == {
        "very good": (2, 1),
        "good": (0, 1),
        "medium": (2, 2),
        "low": (1, 1),
    }
    bands = {name: counts[name] for name in counts if name[0].isdigit()}
    assert bands == {
        "0-9": (1, 1),
        "10-19": (0, 0),
        "20-29": (0, 0),
        "30-39": (0, 0),
        "40-49": (2, 2),
        "50-59": (0, 0),
        "60-69": (0, 0),
        "70-79": (1, 1),
        "80-89": (0, 0),
        "90-100": (1, 1),
    }
    assert "1 of 5 profiles would change segment" in out


# --- model deploy and history -----------------------------------------------------


def history(capsys: pytest.CaptureFixture[str], config: Path) -> list[tuple[str, str, str]]:
    """(marker, version, origin) per deploy, newest first."""
    code, out, _ = run(capsys, "model", "history", "--config", str(config))
    assert code == 0
    rows = []
    for line in out.splitlines()[1:]:
        words = line.split()
        marker = words.pop(0) if words[0] == "active" else ""
        rows.append((marker, words[0], words[-1]))
    return rows


async def test_deploy_changes_the_active_model_refuses_a_changed_version_and_rolls_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    v1 = model_file(tmp_path / "v1.toml", "v1")
    code, _, err = run(capsys, "model", "deploy", str(v1), "--config", str(config))
    assert code == 73
    assert "no database at" in err

    database = tmp_path / "var" / "leadsync.db"
    await (await SqliteStorage.open(database)).close()
    code, out, _ = run(capsys, "model", "history", "--config", str(config))
    assert "no model deployed yet" in out

    code, out, _ = run(capsys, "model", "deploy", str(v1), "--config", str(config))
    assert code == 0
    assert f"deployed model v1 from {v1} (the first model deployed)" in out
    assert "rescored with it in the next batch run" in out
    v2 = model_file(tmp_path / "v2.toml", "v2", EXAMPLE.replace("points = 35", "points = 30"))
    code, out, _ = run(capsys, "model", "deploy", str(v2), "--config", str(config))
    assert code == 0
    assert "deployed model v2" in out
    assert "replacing v1" in out
    rows = history(capsys, config)
    assert rows == [("active", "v2", str(v2.resolve())), ("", "v1", str(v1.resolve()))]

    # Same version, other content: refused, and v2 stays exactly as deployed.
    changed = model_file(
        tmp_path / "v2-changed.toml", "v2", EXAMPLE.replace("points = 35", "points = 1")
    )
    code, out, err = run(capsys, "model", "deploy", str(changed), "--config", str(config))
    assert code == 65
    assert "version 'v2' was deployed before with other content" in err
    assert "the active model stays" in err
    assert [row[:2] for row in history(capsys, config)] == [("active", "v2"), ("", "v1")]
    with closing(sqlite3.connect(database)) as db:
        assert (
            db.execute("SELECT body FROM models WHERE version = 'v2'").fetchone()[0]
            == v2.read_text()
        )

    # A rollback: v1 again.
    code, out, _ = run(capsys, "model", "deploy", str(v1), "--config", str(config))
    assert code == 0
    assert "deployed model v1" in out
    assert "replacing v2" in out
    assert [row[:2] for row in history(capsys, config)] == [
        ("active", "v1"),
        ("", "v2"),
        ("", "v1"),
    ]
    code, out, _ = run(capsys, "model", "deploy", str(v1), "--config", str(config))
    assert (code, out) == (0, "model v1 is already the active model: nothing changed\n")

    broken = model_file(tmp_path / "broken.toml", "v3", EXAMPLE.replace("[fit.segments]", "[fit"))
    code, out, err = run(capsys, "model", "deploy", str(broken), "--config", str(config))
    assert code == 65
    assert f"{broken}: not valid TOML" in err
    assert history(capsys, config)[0][:2] == ("active", "v1")


# --- score-csv --------------------------------------------------------------------

HEADER = "Name,Job Title,Company Size,Industry,Email\r\n"


def test_score_csv_scores_the_good_rows_reports_the_bad_ones_and_drops_the_bom(
    tmp_path: Path,
) -> None:
    (tmp_path / "leads.csv").write_bytes(
        b"\xef\xbb\xbf"
        + HEADER.encode()
        + b"Ann,CTO,200,Software,ann@initech.com\r\n"
        + b"Bob,CTO,200,Software,bob@gmail.com\r\n"
        + b"Carl,CTO,200,Software\r\n"
        + b"D\xe9sir\xe9e,CTO,200,Software,d@initech.com\r\n"
        + b'"Eve, Jr.",Engineer,5,Retail,eve@shop.example\r\n'
    )
    result = leadsync(
        "score-csv",
        "--model",
        str(model_file(tmp_path / "m.toml", "m-1")),
        "leads.csv",
        "out.csv",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[2:] == [  # after the warning about 'Name'
        "leads.csv:4: 4 fields where the header has 5",
        "leads.csv:5: not UTF-8 (byte 0xe9 in column 'Name')",
    ]
    assert "scored 3 rows into out.csv with model m-1" in result.stdout
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as out:
        rows = list(csv.reader(out))
    assert rows[0] == [
        "Name", "Job Title", "Company Size", "Industry", "Email",
        "mk_customer_fit_score", "mk_customer_fit_segment", "mk_customer_fit_signals",
        "mk_job_title", "mk_country", "mk_company_size", "mk_industry",
    ]  # fmt: skip
    scored = {row[0]: row[5:] for row in rows[1:]}
    assert scored == {
        "Ann": [
            "100",
            "very good",
            "Senior decision maker; Mid-sized company (50-999 people); Software industry",
            "CTO", "", "200", "Software",
        ],
        # No work-email points (20), and -10 for the personal address.
        "Bob": [
            "70",
            "very good",
            "Senior decision maker; Mid-sized company (50-999 people); Software industry",
            "CTO", "", "200", "Software",
        ],
        "Eve, Jr.": ["20", "low", "Work email address", "Engineer", "", "5", "Retail"],
    }  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv", "m.toml", "out.csv"]


def test_score_csv_maps_columns_to_traits_nested_and_of_the_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "Full Name,Position,Headcount,Sector,Contact\nAnn,CTO,200,Software,a@initech.com\n"
    )
    out = tmp_path / "out.csv"
    model = str(model_file(tmp_path / "m.toml", "m-1"))
    maps = [
        "--map", "Position=jobTitle",
        "--map", "Headcount=company.employee_count",
        "--map", "Sector=account.industry",
        "--map", "Contact=email",
    ]  # fmt: skip
    code, _, err = run(capsys, "score-csv", "--model", model, *maps, str(leads), str(out))
    assert code == 0
    assert "reads nothing from 'Full Name' (as full_name);" in err
    with out.open(newline="") as file:
        [row] = list(csv.DictReader(file))
    assert row["mk_customer_fit_score"] == "100"
    assert row["mk_job_title"] == "CTO"
    assert row["mk_company_size"] == "200"
    assert row["mk_industry"] == "Software"

    out.unlink()
    code, _, err = run(
        capsys, "score-csv", "--model", model, "--map", "Title=job_title", str(leads), str(out)
    )
    assert code == 64
    assert "no column 'Title' in the header" in err
    code, _, err = run(
        capsys, "score-csv", "--model", model, "--map", "Position", str(leads), str(out)
    )
    assert code == 64
    assert "expected COLUMN=TRAIT" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv", "m.toml"]


def test_score_csv_reports_twenty_bad_rows_then_counts_and_exits_65_or_66_when_it_cannot_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text(HEADER + "Ann,CTO,200,Software,ann@initech.com\n" + "x,y\n" * 25)
    model = str(model_file(tmp_path / "m.toml", "m-1"))
    out = str(tmp_path / "out.csv")
    code, stdout, err = run(capsys, "score-csv", "--model", model, str(leads), out)
    assert code == 1
    lines = err.splitlines()[2:]  # after the warning about 'Name'
    assert lines[:20] == [f"{leads}:{n}: 2 fields where the header has 5" for n in range(3, 23)]
    assert lines[20:] == [f"{leads}: 5 more rows could not be scored"]
    assert "25 rows could not be scored" in stdout

    broken = model_file(
        tmp_path / "broken.toml", "b", EXAMPLE.replace("points = 35", "points = 350")
    )
    code, _, err = run(capsys, "score-csv", "--model", str(broken), str(leads), out)
    assert code == 65
    assert err.startswith(f"leadsync: {broken}:{line_of(broken, 'points = 350')}: fit.rules")
    assert "points: Expected `float` <= 100" in err
    code, _, err = run(capsys, "score-csv", "--model", model, str(tmp_path / "none.csv"), out)
    assert code == 66
    assert "none.csv: cannot read" in err


def test_an_interrupted_score_csv_leaves_the_old_output_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text(HEADER + "Ann,CTO,200,Software,ann@initech.com\n" * (bulk.PROGRESS_EVERY * 2))
    out = tmp_path / "out.csv"
    out.write_text("the previous run's output\n")

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bulk.score_csv(example(), leads, out, {}, lambda line, reason: None, interrupt)
    assert out.read_text() == "the previous run's output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv", "out.csv"]


# --- check-config -----------------------------------------------------------------


def test_check_config_loads_the_configured_model_and_fails_like_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "check-config", "--config", str(config_file(tmp_path)))
    assert code == 0
    assert (
        "  scoring    the model deployed last (leadsync model deploy), else the built-in example"
        in out
    )
    path = model_file(tmp_path / "ours.toml", "ours-7")
    config = config_file(tmp_path, f'[scoring]\nmodel = "{path}"\n')
    code, out, _ = run(capsys, "check-config", "--config", str(config))
    assert code == 0
    assert f"  scoring    model {path} (version ours-7)" in out
    path.write_text(EXAMPLE.replace("min = 50", "min = 5000"))
    code, out, err = run(capsys, "check-config", "--config", str(config))
    assert code == 2
    assert out == ""
    assert err == (
        f"leadsync: {path}:{line_of(path, 'max = 1000')}: fit.rules[2].max: "
        "must be more than min (5000)\n"
        "leadsync: `leadsync run` would log this, keep the model deployed last and score "
        "with it; with none ever deployed, it would not start\n"
    )


# --- against a running daemon -----------------------------------------------------


def test_scoring_run_profile_and_deploy_against_the_running_daemon(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon().start()
    config = str(daemon.config_path)
    assert send(daemon, "/v1/identify", {"userId": "ann", "traits": CTO}).status == 200
    group = {"userId": "ann", "groupId": "initech", "traits": {"industry": "Software"}}
    assert send(daemon, "/v1/group", group).status == 200
    wait_for(
        lambda: (daemon.admin("/v1/profiles/user_id/ann")[1].get("account") or {}).get("scores")
    )

    run_now = leadsync("scoring", "run", "--config", config)
    assert run_now.returncode == 0, run_now.stderr
    assert re.search(r"^batch run done in \d+\.\ds: 1 profile and 1 account scored", run_now.stdout)

    shown = leadsync_here("profile", "user_id:ann", "--config", config)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.index("traits") < text.index("mk_customer_fit_score")
    for expected in ("mk_customer_fit_score", "100", "very good", "mk_lead_grade",
                     "fit by model example-1", "scores of account initech"):  # fmt: skip
        assert expected in text

    # A deploy from the command line reaches the running daemon by itself.
    ours = model_file(
        tmp_path / "ours.toml", "ours-1", EXAMPLE.replace("points = 35", "points = 5")
    )
    deployed = leadsync("model", "deploy", str(ours), "--config", config)
    assert deployed.returncode == 0, deployed.stderr
    wait_for(lambda: "ours-1" in daemon.admin("/metrics")[1])
    rerun = leadsync_here("scoring", "run", "--config", config)
    assert "1 fit made anew by the active model" in rerun.stdout
    score = daemon.admin("/v1/profiles/user_id/ann")[1]["scores"]
    assert (score["fit_model"], score["traits"]["mk_customer_fit_score"]) == ("ours-1", 70)


def test_scoring_run_without_a_daemon_exits_69() -> None:
    port = free_port()
    result = leadsync("scoring", "run", "--admin", f"http://127.0.0.1:{port}")
    assert result.returncode == 69
    assert f"cannot reach the admin API at http://127.0.0.1:{port}/v1/scoring/run" in result.stderr
