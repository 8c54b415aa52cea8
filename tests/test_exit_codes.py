"""The exit codes: each means one thing, so a script or a unit file can act on it."""

from actors import exit_codes


def test_no_two_exit_codes_share_a_value() -> None:
    codes = {name: value for name, value in vars(exit_codes).items() if name.startswith("EXIT_")}
    by_value: dict[int, list[str]] = {}
    for name, value in codes.items():
        by_value.setdefault(value, []).append(name)
    assert {v: n for v, n in by_value.items() if len(n) > 1} == {}
    assert all(0 < value < 256 for value in codes.values())
