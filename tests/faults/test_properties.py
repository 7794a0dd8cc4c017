"""Property-based tests (hypothesis): the IDX reader on damaged files, and the eps / step argument parsers."""

import argparse
import contextlib
import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from capsrobust.cli import build_parser
from capsrobust.cli.args import eps_list, positive_float, positive_int
from capsrobust.data import read_idx, write_idx
from capsrobust.data.idx import gzip_bytes
from capsrobust.errors import DataError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- the IDX reader -------------------------------------------------------------------------------------------------

ARRAYS = st.builds(
    lambda shape, seed: np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8),
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), st.integers(0, 2**16))


def _damage(payload: bytes, how: str, position: int, byte: int) -> bytes:
    position %= len(payload)
    if how == "cut":
        return payload[:position]
    if how == "set":
        return payload[:position] + bytes([byte]) + payload[position + 1:]
    if how == "insert":
        return payload[:position] + bytes([byte]) + payload[position:]
    return payload[:position] + payload[position + 1:]  # delete


@FAST
@given(array=ARRAYS, how=st.sampled_from(["cut", "set", "insert", "delete"]), position=st.integers(0, 10**6),
       byte=st.integers(0, 255), gzipped=st.booleans())
def test_damaged_idx_is_read_exactly_or_refused_in_one_line(tmp_path, array, how, position, byte, gzipped):
    """One damaged byte anywhere in a valid file (raw IDX, or the gzip stream around it): the reader returns an array
    consistent with the header it read, or raises a one-line DataError naming the file. Nothing else."""
    name = "damaged.gz" if gzipped else "damaged.idx"
    write_idx(tmp_path / name, array)
    damaged = _damage((tmp_path / name).read_bytes(), how, position, byte)
    (tmp_path / name).write_bytes(damaged)
    try:
        result = read_idx(tmp_path / name)
    except DataError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(tmp_path / name))
    else:
        assert isinstance(result, np.ndarray) and 1 <= result.ndim <= 4
        if gzipped:  # gzip's CRC-32 guards the payload: a damaged stream that still inflates inflates to the original
            assert result.shape == array.shape and np.array_equal(result, array)
        elif result.shape == array.shape and result.dtype == np.uint8:  # the damage can only be one pixel's value
            assert np.count_nonzero(result != array) <= 1


@FAST
@given(header=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), tail=st.binary(max_size=40))
def test_header_claiming_more_than_the_file_holds_is_refused(tmp_path, header, tail):
    """A header announcing more data than follows it never allocates or reads past the end: it is refused."""
    assume(math.prod(header) > len(tail))
    path = tmp_path / "claims.idx"
    path.write_bytes(gzip_bytes(bytes([0, 0, 8, len(header)]) + b"".join(d.to_bytes(4, "big") for d in header) + tail))
    with pytest.raises(DataError) as excinfo:
        read_idx(path)
    assert "\n" not in str(excinfo.value) and str(path) in str(excinfo.value)


# --- eps and step arguments -----------------------------------------------------------------------------------------

EPS_VALUES = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=6)
NUMBER_LIKE = st.lists(st.one_of(st.floats().map(repr), st.integers(-5, 5).map(str), st.sampled_from(
    ["", " ", "nan", "inf", "-inf", "1e-3", "0x1", "1_0", ".5", "5.", "--0.1", "0,1", "½", "٠.٥", "1e400"])),
    min_size=1, max_size=4).map(",".join)


@FAST
@given(values=EPS_VALUES)
def test_eps_list_round_trips_every_value_in_range(values):
    assert eps_list(",".join(map(repr, values))) == tuple(values)


@FAST
@given(text=NUMBER_LIKE | st.text(max_size=20))
def test_eps_list_accepts_only_finite_non_negative_values_or_says_why(text):
    """Any finite eps >= 0 parses (L2 budgets exceed 1; the L-inf bound is checked with the norm, see
    test_cli_arguments)."""
    try:
        parsed = eps_list(text)
    except argparse.ArgumentTypeError as error:
        assert "\n" not in str(error) and ("eps" in str(error) or "numbers >= 0" in str(error))
    else:
        assert len(parsed) == text.count(",") + 1
        assert all(isinstance(e, float) and math.isfinite(e) and 0 <= e for e in parsed)


@FAST
@given(text=NUMBER_LIKE | st.text(max_size=12))
def test_step_size_and_steps_accept_only_positive_finite_values(text):
    for parse, kind in ((positive_float, float), (positive_int, int)):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as error:
            assert "\n" not in str(error) and repr(text) in str(error)
        else:
            assert isinstance(value, kind) and math.isfinite(value) and value > 0


@settings(max_examples=60, deadline=None)
@given(eps=NUMBER_LIKE, steps=st.integers(-3, 3).map(str) | st.text(max_size=5),
       step=NUMBER_LIKE | st.text(max_size=5))
def test_attack_command_line_parses_or_exits_2_with_one_line(eps, steps, step):
    """The whole `attack` parser: every combination parses to in-range values or exits with status 2 and a single
    `error:` line (after argparse's usage), never a traceback."""
    argv = ["attack", f"--eps={eps}", f"--steps={steps}", f"--step-size={step}"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 2
        lines = err.getvalue().strip().splitlines()
        assert lines[-1].startswith("capsrobust attack: error: argument --") and "Traceback" not in err.getvalue()
    else:
        assert all(0 <= e < math.inf for e in args.eps) and args.steps >= 1 and 0 < args.step_size < math.inf
