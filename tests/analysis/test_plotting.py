"""Learning-curve plots and run comparison from synthetic `metrics.csv` files, and the plotting
scripts' answers to bad arguments."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from tinyzero.analysis.compare import comparison_figure, find_runs
from tinyzero.analysis.plotting import HELDOUT_BAND, read_curves, read_steps, run_figure, smoothing_window

TRAINING = ("score/mean", "response_length/mean", "actor/kl_loss", "actor/entropy", "time/step")
EVAL_EVERY = 10


def heldout(step: int, steps: int) -> dict:
    """Accuracy rising linearly from 0.2 to 0.8, a band of ±0.05 around it."""
    accuracy = 0.2 + 0.6 * step / steps
    return {"val/accuracy": accuracy, HELDOUT_BAND[0]: accuracy - 0.05, HELDOUT_BAND[1]: accuracy + 0.05}


def training(step: int, rng: np.random.Generator) -> dict:
    return {key: 1.0 + rng.normal(0, 0.1) for key in TRAINING}


def write_metrics(run, steps: int, split: bool, band: bool = True, seed: int = 0) -> None:
    """`run/metrics.csv` in the one numbering: step 0 the evaluation before training, step k update k
    (and the evaluation after it every EVAL_EVERY steps), in one row per step or, with `split`, the
    evaluation in a row of its own. `critic/value_loss` is a column that is never filled."""
    rng = np.random.default_rng(seed)
    rows = [{"step": 0, **heldout(0, steps)}]
    for step in range(1, steps + 1):
        evaluation = heldout(step, steps) if step % EVAL_EVERY == 0 else {}
        if split and evaluation:
            rows += [{"step": step, **training(step, rng)}, {"step": step, **evaluation}]
        else:
            rows.append({"step": step, **training(step, rng), **evaluation})
    columns = ["step", *TRAINING, "val/accuracy", *(HELDOUT_BAND if band else ()), "critic/value_loss"]
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def panels(fig) -> dict:
    """{panel title: axes} of the figure's visible panels."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def test_split_rows_read_as_one_row_per_step(tmp_path):
    write_metrics(tmp_path / "merged", 30, split=False)
    write_metrics(tmp_path / "split", 30, split=True)
    steps = read_steps(tmp_path / "split")
    assert steps == read_steps(tmp_path / "merged")
    assert list(steps) == list(range(31))
    assert set(steps[10]) == {*TRAINING, "val/accuracy", *HELDOUT_BAND}  # both rows of step 10
    assert set(steps[0]) == {"val/accuracy", *HELDOUT_BAND}  # before training: the evaluation only
    assert "critic/value_loss" not in read_curves(tmp_path / "split")  # an empty column is no curve


def test_files_from_before_the_one_numbering_read_in_it(tmp_path):
    """Training rows logged at `step` k-1 with `train/rl_step` k are step k, as the evaluations are."""
    rows = [
        {"step": 0, "val/accuracy": 0.25},
        {"step": 0, "score/mean": 0.5, "train/rl_step": 1.0},
        {"step": 1, "score/mean": 0.75, "train/rl_step": 2.0},
        {"step": 2, "val/accuracy": 0.5},
    ]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "score/mean", "train/rl_step", "val/accuracy"])
        writer.writeheader()
        writer.writerows(rows)
    curves = read_curves(tmp_path)
    assert curves["score/mean"] == [(1, 0.5), (2, 0.75)]
    assert curves["val/accuracy"] == [(0, 0.25), (2, 0.5)]


@pytest.mark.parametrize("split", [False, True])
def test_run_figure_labels_band_and_smoothed_curves(tmp_path, split):
    steps = 200
    run = tmp_path / "countdown_easy_grpo" / "2026-12-01_10-00-00"
    write_metrics(run, steps, split=split)
    fig = run_figure(run)
    assert "countdown_easy_grpo/2026-12-01_10-00-00" in fig._suptitle.get_text()
    shown = panels(fig)
    # value loss has an empty column: no panel for it, rather than a blank one
    assert set(shown) == {"held-out greedy accuracy", "training reward", "response length", "KL to the reference"} | {
        "policy entropy"
    }
    for ax in shown.values():
        assert ax.get_xlabel() and ax.get_ylabel()

    accuracy = shown["held-out greedy accuracy"]
    [line] = accuracy.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), range(0, steps + 1, EVAL_EVERY))
    [band] = accuracy.collections
    low, high = band.get_paths()[0].get_extents().y0, band.get_paths()[0].get_extents().y1
    assert low == pytest.approx(0.2 - 0.05) and high == pytest.approx(0.8 + 0.05)
    assert "95 % Wilson interval" in [t.get_text() for t in accuracy.get_legend().get_texts()]

    window = smoothing_window(steps)
    assert window == 11  # 200 points / 20, made odd: a centred window
    for title in ("training reward", "response length", "KL to the reference", "policy entropy"):
        raw, smooth = shown[title].get_lines()
        assert raw.get_alpha() < 1 and smooth.get_alpha() is None
        assert len(raw.get_xdata()) == len(smooth.get_xdata()) == steps and raw.get_xdata()[0] == 1
        assert np.std(smooth.get_ydata()) < np.std(raw.get_ydata()) / 2  # it smooths the noise
        legend = [t.get_text() for t in shown[title].get_legend().get_texts()]
        assert legend == ["per step", f"centred mean of {window} steps"]


def test_short_run_without_band_columns(tmp_path):
    """Too few steps to smooth: the points themselves, one line; no interval logged: no band."""
    write_metrics(tmp_path, 10, split=True, band=False)
    shown = panels(run_figure(tmp_path))
    assert len(shown["training reward"].get_lines()) == 1
    assert len(shown["held-out greedy accuracy"].get_lines()) == 1
    assert not shown["held-out greedy accuracy"].collections


def test_comparison_figure_one_colour_per_run_and_one_legend(tmp_path):
    runs = []
    for index, steps in enumerate((100, 100, 60)):
        runs.append(tmp_path / str(index))
        write_metrics(runs[-1], steps, split=index == 1, seed=index)
    labels = ["kl_loss_coef=0", "kl_loss_coef=0.001", "kl_loss_coef=0.01"]
    fig = comparison_figure(runs, labels, title="3 runs: sweep")
    assert fig._suptitle.get_text() == "3 runs: sweep"
    shown = panels(fig)
    assert "value loss" not in shown and len(shown) == 5
    for ax in shown.values():
        assert ax.get_xlabel() and ax.get_ylabel()
    accuracy = shown["held-out greedy accuracy"]
    assert len(accuracy.get_lines()) == 3 and len(accuracy.collections) == 3  # a band per run
    assert [line.get_color() for line in accuracy.get_lines()] == ["C0", "C1", "C2"]
    assert len(shown["training reward"].get_lines()) == 6  # faint + smoothed per run
    [legend] = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:3] == labels and "held-out 95 % Wilson interval" in texts
    assert "centred mean of ~1/20 of each run's steps" in texts  # windows of 5 and 3 points


def write_sweep(sweep) -> None:
    """Three jobs: two finished with metrics, one that never started (status, overrides, no metrics)."""
    for job, (value, status) in enumerate([("0", "finished"), ("0.01", "finished"), ("0.1", "not started")]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        overrides = f"- experiment=countdown_tiny\n- algorithm.kl_loss_coef={value}\n"
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(overrides)
        (sweep / str(job) / "status.txt").write_text(f"{status}\n")
        if status == "finished":
            write_metrics(sweep / str(job), 40, split=job == 1, seed=job)


def test_compare_on_a_sweep_keeps_its_status_column(tmp_path):
    """`compare.py SWEEP_DIR` (as README writes it) remakes the sweep's summary.csv as the sweep callback
    writes it: every job, its status included."""
    from tinyzero.analysis.sweep import summarize_sweep

    sweep = tmp_path / "sweep"
    write_sweep(sweep)
    summarize_sweep(sweep)
    written_by_sweep = (sweep / "summary.csv").read_text()
    result = subprocess.run(
        [sys.executable, "scripts/compare.py", str(sweep)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (sweep / "summary.csv").read_text() == written_by_sweep
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"]) for r in rows] == [
        ("algorithm.kl_loss_coef=0", "finished"),
        ("algorithm.kl_loss_coef=0.01", "finished"),
        ("algorithm.kl_loss_coef=0.1", "not started"),
    ]
    # accuracy 0.2 + 0.6 k / 40, evaluated every 10 steps: 0.5 first reached at step 20, 0.8 at step 40
    for row in rows[:2]:
        assert (row["steps"], row["steps_to_target"]) == ("40", "20")
        assert float(row["final_accuracy"]) == pytest.approx(0.8) == float(row["best_accuracy"])
    assert rows[2]["steps"] == rows[2]["final_accuracy"] == ""
    assert "not started" in result.stdout and (sweep / "comparison.png").stat().st_size > 0
    assert find_runs([sweep]) == [sweep / "0", sweep / "1", sweep / "2"]


@pytest.mark.parametrize(
    "command, expected",
    [
        (["scripts/plot.py", "{empty}"], "metrics.csv not found"),
        (["scripts/plot.py", "{empty}/no_such_run"], "metrics.csv not found"),
        (["scripts/phase_report.py"], "the following arguments are required: run_dir"),
        (["scripts/phase_report.py", "{empty}"], "metrics.csv not found"),
        (["scripts/compare.py", "{empty}"], "no run (metrics.csv or status.txt) under"),
    ],
)
def test_scripts_answer_bad_arguments_with_usage_and_status_2(tmp_path, command, expected):
    """As README writes them (`python scripts/plot.py outputs/runs/<run>/<time>`), on a folder that is
    not a run or with no argument: the usage and what was expected, no traceback, exit status 2."""
    args = [arg.format(empty=tmp_path) for arg in command]
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ") and expected in result.stderr
    assert "Traceback" not in result.stderr and not result.stdout
    assert len(result.stderr.strip().splitlines()) == 2  # the usage line, then the message


def test_behaviour_figure_has_a_panel_per_held_out_behaviour(tmp_path):
    from tinyzero.analysis.plotting import behaviour_figure, plot_behaviour

    rows = [
        {"step": step, **heldout(step, 30), "val/response_length": 20 + step, "val/behaviour/attempts": 1 + step / 10}
        for step in range(0, 31, 10)
    ]
    rows.append({"step": 5, "score/mean": 0.3, "behaviour/attempts": 2.0})  # a training row: not drawn
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({key for row in rows for key in row}))
        writer.writeheader()
        writer.writerows(rows)
    fig = behaviour_figure(tmp_path)
    shown = panels(fig)
    assert list(shown) == ["held-out greedy accuracy", "response length", "attempts"]
    assert list(shown["attempts"].lines[0].get_xdata()) == [0, 10, 20, 30]
    assert plot_behaviour(tmp_path).name == "behaviour.png" and (tmp_path / "behaviour.png").stat().st_size > 0
