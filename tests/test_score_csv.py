"""`leadsync score-csv` as a user pipes and points it: `-` for stdin and stdout, an
output path that is not a file, columns the model does not read, the input's
encoding and line endings. Each through the command in a subprocess."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from actors.scoring.model import example
from tests.support.cli import leadsync

LEADS = "Job Title,Company Size,Industry,Email\nCTO,200,Software,ann@initech.com\n"
"""Only columns the model reads, so that no warning is printed."""


def score(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    model = tmp_path / "model.toml"
    model.write_text(example().text)
    return subprocess.run(
        [sys.executable, "-m", "daemon", "score-csv", "--model", str(model), *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )


def test_dash_reads_stdin_and_writes_stdout_with_the_summary_on_stderr(tmp_path: Path) -> None:
    result = score(tmp_path, "-", "-", stdin=LEADS.encode())
    assert result.returncode == 0
    lines = result.stdout.decode().split("\n")
    assert lines[0].startswith("Job Title,Company Size,Industry,Email,mk_customer_fit_score")
    assert lines[1].startswith("CTO,200,Software,ann@initech.com,100,very good,")
    assert lines[2:] == [""]
    assert result.stderr == b"scored 1 row into <stdout> with model example-1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.toml"]


def test_lines_end_as_the_input_s_lf_by_default_crlf_when_the_input_has_it(
    tmp_path: Path,
) -> None:
    crlf = LEADS.replace("\n", "\r\n").encode()
    assert score(tmp_path, "-", "-", stdin=crlf).stdout.count(b"\r\n") == 2
    lf = score(tmp_path, "-", "-", stdin=LEADS.encode()).stdout
    assert b"\r" not in lf
    assert lf.count(b"\n") == 2

    (tmp_path / "lf.csv").write_text(LEADS)
    (tmp_path / "crlf.csv").write_bytes(crlf)
    assert score(tmp_path, "lf.csv", "out-lf.csv").returncode == 0
    assert score(tmp_path, "crlf.csv", "out-crlf.csv").returncode == 0
    assert b"\r" not in (tmp_path / "out-lf.csv").read_bytes()
    assert (tmp_path / "out-crlf.csv").read_bytes().count(b"\r\n") == 2


def test_an_output_that_is_not_a_regular_file_is_refused_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    (tmp_path / "leads.csv").write_text(LEADS)
    (tmp_path / "device").symlink_to(os.devnull)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    expected = {
        "device": f"device is a symbolic link (to {os.devnull}), not a regular file",
        "fifo": "fifo is a named pipe, not a regular file",
        "folder": "folder is a directory, not a regular file",
    }
    for name, message in expected.items():
        result = score(tmp_path, "leads.csv", name)
        assert result.returncode == 73, name
        assert result.stderr.decode().startswith(f"leadsync: {message}"), result.stderr
        assert "- for standard output" in result.stderr.decode()
    assert (tmp_path / "device").is_symlink()
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode)
    assert (tmp_path / "folder").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    (tmp_path / "out.csv").write_text("the previous run's\n")
    assert score(tmp_path, "leads.csv", "out.csv").returncode == 0
    assert "CTO,200" in (tmp_path / "out.csv").read_text()


def test_columns_the_model_does_not_read_are_named_with_the_map_that_would_use_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "leads.csv").write_text(
        "Name,Job Title,Org Size,Industry,Email\nAnn,CTO,200,Software,ann@initech.com\n"
    )
    result = score(tmp_path, "leads.csv", "out.csv")
    assert result.returncode == 0
    assert result.stderr.decode().splitlines()[:1] == [
        "leads.csv: the model reads nothing from 'Name' (as name), 'Org Size' (as org_size); "
        "copied, not scored"
    ]
    assert "--map COLUMN=TRAIT gives a column a trait it reads: " in result.stderr.decode()
    assert "company_size" in result.stderr.decode()
    unmapped = (tmp_path / "out.csv").read_text()

    result = score(tmp_path, "--map", "Org Size=company_size", "leads.csv", "out.csv")
    assert result.returncode == 0
    assert result.stderr.decode().splitlines()[:1] == [
        "leads.csv: the model reads nothing from 'Name' (as name); copied, not scored"
    ]
    assert ",75,very good," in unmapped
    assert ",100,very good," in (tmp_path / "out.csv").read_text()


def test_encoding_reads_and_writes_the_file_s_own_and_refuses_an_unknown_one(
    tmp_path: Path,
) -> None:
    leads = LEADS.replace("Software", "Télécoms").encode("cp1252")
    (tmp_path / "leads.csv").write_bytes(leads)

    result = score(tmp_path, "leads.csv", "utf8.csv")
    assert result.returncode == 1
    assert b"leads.csv:2: not UTF-8 (byte 0xe9 in column 'Industry')" in result.stderr

    result = score(tmp_path, "--encoding", "cp1252", "leads.csv", "out.csv")
    assert (result.returncode, result.stderr) == (0, b"")
    assert (
        (tmp_path / "out.csv")
        .read_bytes()
        .split(b"\n")[1]
        .startswith("CTO,200,Télécoms,ann@initech.com,".encode("cp1252"))
    )

    result = score(tmp_path, "--encoding", "klingon", "leads.csv", "out.csv")
    assert result.returncode == 64
    assert result.stderr == b"leadsync: --encoding: unknown encoding 'klingon' " + (
        b"(for instance utf-8, cp1252, latin-1)\n"
    )


def test_help_says_dash_and_encoding() -> None:
    out = leadsync("score-csv", "--help").stdout
    assert "- for stdin" in out
    assert "- for stdout" in out
    assert "--encoding" in out
