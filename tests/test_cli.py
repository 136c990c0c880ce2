"""The `dxdt` command: end to end on the bundled data, every malformed input (exit 2, a message naming the
problem, nothing written), non-convergence (exit 1), simulate against an analytic solution, models."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from dxdt.cli import main
from dxdt.data import DataError, available, load, path, read_csv

FLU = "boarding_school_influenza_1978"
GOOD = ["--model", "sir", "--time", "day", "--observe", "I=in_bed", "--population", "763"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def fit_outputs(tmp_path_factory):
    """One end-to-end `dxdt fit` on the bundled data with a forecast, JSON and plot (shared by the checks)."""
    tmp = tmp_path_factory.mktemp("fit")
    png, js = tmp / "fit.png", tmp / "fit.json"
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["fit", str(path(FLU)), *GOOD, "--forecast", "5", "--plot", str(png), "--json", str(js)])
    return code, out.getvalue(), err.getvalue(), png, js


def test_fit_bundled_data_end_to_end(fit_outputs):
    code, out, err, png, js = fit_outputs
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert float(rows["beta"][1]) == pytest.approx(1.669, abs=5e-4)
    assert float(rows["gamma"][1]) == pytest.approx(0.4435, abs=5e-4)
    assert float(rows["R0"][1]) == pytest.approx(1.669 / 0.4435, rel=1e-3)
    for word in ("95% CI (Wald)", "95% CI (profile)", "converged", "forecast"):
        assert word in out
    assert "S=762, I=1, R=0" in out
    payload = json.loads(js.read_text())
    beta = payload["params"]["beta"]
    assert beta["lower"] < beta["estimate"] < beta["upper"]
    assert beta["profile_lower"] < beta["estimate"] < beta["profile_upper"]
    assert payload["derived"]["R0"]["estimate"] == pytest.approx(
        beta["estimate"] / payload["params"]["gamma"]["estimate"]
    )
    fc = payload["forecast"]
    assert fc["times"][-1] == 19 and sum(fc["future"]) == 5
    assert all(lo <= m <= hi for lo, m, hi in zip(fc["I"]["lower"], fc["I"]["mean"], fc["I"]["upper"]))
    assert payload["convergence"]["converged"] is True
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_accepts_a_path_and_comment_lines(tmp_path, capsys):
    csv = tmp_path / "flu.csv"
    csv.write_text("# a comment\n\n" + path(FLU).read_text() + "# trailing comment\n")
    code, out, err = run(capsys, "fit", str(csv), *GOOD, "--no-profile", "--quiet")
    assert code == 0, err
    assert out == ""


# --- malformed input: exit 2, a message naming the problem, nothing written ------------------------------

TABLE = "day,cases\n1,3\n2,8\n3,26\n4,76\n5,120\n"


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (TABLE, ["--observe", "I=in_bed"], "no column 'in_bed'; its columns are: day, cases"),
        (TABLE, ["--time", "days"], "--time: .* has no column 'days'"),
        ("day,cases\n1,3\n2,abc\n3,26\n", [], "line 3, column 'cases': 'abc' is not a number"),
        ("day,cases\n1,3\n3,8\n2,26\n", [], "column 'day' is not increasing: line 4 has 2 after 3"),
        ("day,cases\n1,3\n2,8\n2,26\n", [], "has the time 2 twice \\(lines 3 and 4\\)"),
        ("day,cases\n1,3\n2,-8\n3,26\n", [], "line 3, column 'cases': -8 is negative"),
        ("", [], "is empty"),
        ("# only a comment\n", [], "is empty"),
        ("day,cases\n", [], "has a header \\(day, cases\\) but no data rows"),
        ("day,cases\n1,3,4\n", [], "line 2: 3 values for 2 columns"),
        ("day,cases\n1,3\n2,2.5\n", ["--noise", "poisson"], "2.5 is not a count"),
        ("day,cases\n1,3\n2,0\n", ["--noise", "lognormal"], "0 is not positive"),
        ("day,cases\n,3\n2,8\n", [], "line 2, column 'day': the value is missing"),
        ("day,cases\n-1,3\n2,8\n", [], "the first time -1 \\(line 2\\) is before --t0 0"),
        (TABLE, ["--noise", "student"], "argument --noise: invalid choice: 'student'"),
        (TABLE, ["--model", "sirx"], "--model: unknown model 'sirx'"),
        (TABLE, ["--observe", "I"], "--observe expects STATE=COLUMN"),
        (TABLE, ["--observe", "X=cases"], "'X' is not a state"),
        (TABLE, ["--param", "beta=abc"], "--param beta=abc: 'abc' is not a number"),
        (TABLE, ["--param", "delta=1"], "--param: sir has no parameter 'delta'"),
        (TABLE, ["--fix", "gamma=-1"], "--fix gamma=-1: parameters are positive"),
        (TABLE, ["--level", "1.5"], "--level must be between 0 and 1"),
        (TABLE, ["--forecast", "-3"], "--forecast must be a non-negative number"),
        (TABLE, ["--population", "0"], "--population must be a positive number"),
        (TABLE, ["--init", "I=-2"], "--init I=-2: .* cannot be negative"),
        (TABLE, ["--starts", "0"], "--starts must be at least 1"),
        (TABLE, ["--solver", "rk99"], "--solver: unknown solver 'rk99'"),
        (TABLE, ["--plot", "missing_dir/out.png"], "--plot: the directory missing_dir does not exist"),
        (TABLE, ["--json", "out.txt"], "--json: out.txt should end in .json"),
    ],
)
def test_malformed_input_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch, content, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text(content)
    base = {"--model": "sir", "--time": "day", "--observe": "I=cases", "--population": "1000"}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    args = [x for kv in base.items() for x in kv]
    extra = [] if "--plot" in base else ["--plot", "out.png"]
    extra += [] if "--json" in base else ["--json", "out.json"]
    before = set(tmp_path.iterdir())
    code, _, err = run(capsys, "fit", "data.csv", *args, *extra)
    assert code == 2
    assert __import__("re").search(message, err), err
    assert set(tmp_path.iterdir()) == before


def test_missing_file_and_unknown_dataset(capsys, tmp_path):
    code, _, err = run(capsys, "fit", str(tmp_path / "nope.csv"), *GOOD)
    assert code == 2 and "nope.csv: no such file" in err
    code, _, err = run(capsys, "fit", *GOOD)  # no DATA argument
    assert code == 2 and "required: DATA.csv" in err


def test_fit_that_does_not_converge_exits_1_and_writes_nothing(capsys, tmp_path):
    js = tmp_path / "out.json"
    code, _, err = run(
        capsys,
        "fit",
        FLU,
        *GOOD,
        "--screen",
        "0",
        "--param",
        "beta=0.3",
        "--param",
        "gamma=1",
        "--max-iter",
        "2",
        "--json",
        str(js),
    )
    assert code == 1
    assert "did not converge" in err and "max_iter=2" in err
    assert not js.exists()


def test_plot_without_matplotlib_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    code, _, err = run(capsys, "fit", FLU, *GOOD, "--plot", str(tmp_path / "f.png"))
    assert code == 2 and "--plot needs matplotlib" in err and "pip install dxdt[plot]" in err
    assert not (tmp_path / "f.png").exists()


# --- simulate and models ----------------------------------------------------------------------------------


def test_simulate_logistic_matches_the_analytic_solution(capsys, tmp_path):
    csv, png = tmp_path / "sim.csv", tmp_path / "sim.png"
    code, out, err = run(
        capsys,
        "simulate",
        "--model",
        "logistic",
        "--param",
        "r=0.9",
        "--param",
        "K=40",
        "--init",
        "N=2",
        "--t1",
        "10",
        "--points",
        "21",
        "--csv",
        str(csv),
        "--plot",
        str(png),
    )
    assert code == 0, err
    table = read_csv(csv)
    assert table.columns == ["t", "N"] and table.comments[0].startswith("dxdt simulate --model logistic")
    t, n = table.column("t").numpy(), table.column("N").numpy()
    np.testing.assert_allclose(t, np.linspace(0, 10, 21))
    np.testing.assert_allclose(n, 40 / (1 + (40 / 2 - 1) * np.exp(-0.9 * t)), rtol=1e-7)
    assert png.stat().st_size > 5_000
    assert "logistic" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--model", "lorenz", "--t1", "-1"], 2, "--t1 must be after --t0"),
        (["--model", "lorenz", "--t1", "5", "--param", "rho=-2"], 2, "parameters are positive"),
        (["--model", "lorenz", "--t1", "5", "--points", "1"], 2, "--points must be at least 2"),
        (["--model", "lorenz", "--t1", "5", "--population", "100"], 2, "--population is for epidemic models"),
        (["--model", "robertson", "--t1", "1000", "--max-steps", "300"], 1, "ran out of steps .* stiff"),
    ],
)
def test_simulate_errors(capsys, tmp_path, argv, code, message):
    csv = tmp_path / "x.csv"
    got, _, err = run(capsys, "simulate", *argv, "--csv", str(csv))
    assert got == code
    assert __import__("re").search(message, err), err
    assert not csv.exists()


def test_models_lists_every_model_with_its_parameters(capsys):
    from dxdt.models import MODELS

    code, out, _ = run(capsys, "models")
    assert code == 0
    for name, cls in MODELS.items():
        assert name in out
        for p in cls.param_info:
            assert p in out
    code, out, _ = run(capsys, "models", "sir")
    assert code == 0 and "dI/dt =  beta S I / N - gamma I" in out and "1/day" in out
    code, _, err = run(capsys, "models", "nope")
    assert code == 2 and "unknown model 'nope'" in err


def test_console_script_entry_point():
    """pyproject's [project.scripts] installs `dxdt` as dxdt.cli:main (checked in the installed metadata, which
    is cheaper than starting a second Python that imports torch)."""
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    if "dxdt" not in scripts:
        pytest.skip("dxdt is not installed with its console script here (pip install -e .)")
    assert scripts["dxdt"] == "dxdt.cli:main"


# --- the bundled data and the CSV reader ------------------------------------------------------------------


def test_bundled_data_keeps_its_source_lines():
    table = load(FLU)
    assert FLU in available()
    assert table.columns == ["date", "day", "in_bed", "convalescent"]
    assert len(table) == 14
    assert any("British Medical Journal" in c for c in table.comments)
    assert table.column("in_bed")[5] == 298
    with pytest.raises(DataError, match="line 8, column 'date': '1978-01-22' is not a number"):
        table.column("date")
    with pytest.raises(DataError, match="no bundled data set"):
        path("nope")


def test_read_csv_quoting_and_missing_values(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('t,"x, y"\n1,NA\n2,3.5\n')
    table = read_csv(f)
    assert table.columns == ["t", "x, y"]
    values = table.column("x, y", allow_missing=True)
    assert math.isnan(float(values[0])) and float(values[1]) == 3.5
    with pytest.raises(DataError, match="the value is missing"):
        table.column("x, y")
    assert isinstance(Path(path(FLU)), Path)


def test_progress_is_reported_for_long_fits(capsys):
    from dxdt.cli import _Progress

    progress = _Progress(quiet=False)
    progress(1, 123.0)  # within the first second: silent
    progress.start -= 2.0
    progress.last -= 2.0
    progress(7, 45.5)
    err = capsys.readouterr().err
    assert "iteration 7, objective 45.5" in err and "iteration 1" not in err
    quiet = _Progress(quiet=True)
    quiet.start -= 2.0
    quiet.last -= 2.0
    quiet(3, 1.0)
    assert capsys.readouterr().err == ""
