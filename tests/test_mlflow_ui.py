"""The MLflow UI on the runs of a tiny study, in a real headless Chromium (Debian's, driven by Playwright).

The study and the `mlflow server` on loopback are the session fixtures ``server_study`` /
``mlflow_server`` (tests/conftest.py, shared with tests/test_mlflow_server.py). No browser is
downloaded: Playwright launches /usr/bin/chromium. Screenshots go to the test's tmp dir and, when set,
to ``$TOKENUNI_SCREENSHOTS``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS
TIMEOUT_MS = 90_000  # the UI is a single-page app: generous waits on a loaded 2-core CI machine

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: apt-get install chromium to test the MLflow UI"),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def study_runs(server_study):
    """(experiment id, {job_key: run}, {job_key: record}) of the study on the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server_study["uri"])
    experiment = client.get_experiment_by_name(server_study["experiment"])
    runs = {run.data.tags["tokenuni.job_key"]: run for run in client.search_runs([experiment.experiment_id],
                                                                                 max_results=1000)}
    folder = server_study["workdir"] / "results" / "runs"
    records = {r["job_key"]: r for r in (json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json")))}
    return experiment.experiment_id, runs, records


def _open(browser, url: str):
    """A fresh page (a hash-only change of URL is no navigation for Playwright) on ``url``; a tall
    viewport so that the virtualised runs grid renders every row of a small study."""
    page = browser.new_page(viewport={"width": 1600, "height": 2000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    return page


def _close_assistant(page) -> None:
    """The MLflow Assistant side panel (if this MLflow version shows it) only hides the page."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() == 1:
        close.click()


def _screenshot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TOKENUNI_SCREENSHOTS"):
        target = Path(os.environ["TOKENUNI_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / name)
    return path


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_experiment_page_lists_one_run_per_job(server_study, study_runs, browser, tmp_path):
    experiment_id, runs, records = study_runs
    assert set(runs) == set(records)
    page = _open(browser, f"{server_study['uri']}/#/experiments/{experiment_id}/runs")
    try:
        for job_key in records:  # every job's run, by its name (= job key), exactly once
            link = page.get_by_role("link", name=job_key, exact=True)
            link.first.wait_for()
            assert link.count() == 1, f"{job_key}: {link.count()} rows"
        counter = page.get_by_text(re.compile(r"^\d+ matching runs$"))
        if counter.count():  # MLflow 3's footer: "<n> matching runs"
            assert int(counter.first.inner_text().split()[0]) == len(records)
        _close_assistant(page)
        _screenshot(page, "mlflow_experiment.png", tmp_path)
    finally:
        page.close()


def test_run_pages_show_metrics_and_the_figure(server_study, study_runs, browser, tmp_path):
    experiment_id, runs, records = study_runs
    base = f"{server_study['uri']}/#/experiments/{experiment_id}/runs"
    # a metric job: its run page lists the metric (the last layer's value)
    metric_key = next(key for key, record in records.items() if record["rule"] == "metric")
    metric_run = runs[metric_key]
    page = _open(browser, f"{base}/{metric_run.info.run_id}")
    try:
        page.get_by_text(metric_key, exact=True).first.wait_for()  # the title
        for name, value in metric_run.data.metrics.items():
            page.get_by_role("link", name=name, exact=True).first.wait_for()
            assert page.get_by_text(repr(value), exact=True).count() >= 1, f"{name} = {value!r} not shown"
        assert page.get_by_text("Finished", exact=True).count() >= 1
        _close_assistant(page)
        _screenshot(page, "mlflow_run_metric.png", tmp_path)
    finally:
        page.close()
    # a figure job: its PNG artifact renders in the artifact view at the file's own size
    figure_key = next(key for key, record in records.items() if record["rule"] == "figure_by_layer")
    figure_run, figure_record = runs[figure_key], records[figure_key]
    png = next(a for a in figure_record["artifacts"] if a["path"].endswith(".png"))
    width, height = _png_size(png["path"])
    artifact = f"{png['artifact_path']}/{Path(png['path']).name}"
    page = _open(browser, f"{base}/{figure_run.info.run_id}/artifacts/{artifact}")
    try:
        page.get_by_text(artifact, exact=True).first.wait_for()  # the artifact's header
        page.wait_for_function(
            "([w, h]) => Array.from(document.images).some(i => i.complete && i.naturalWidth === w"
            " && i.naturalHeight === h)", arg=[width, height], timeout=TIMEOUT_MS)
        _close_assistant(page)
        _screenshot(page, "mlflow_run_figure_artifact.png", tmp_path)
    finally:
        page.close()


def test_home_page_leads_to_the_runs_table_with_the_headline_columns(server_study, study_runs, browser, tmp_path):
    """A user opens the UI's home page, picks the study's experiment and lands on its runs table; the
    experiment's description links to the shared view of that table: the runs with headline values, their
    headline metrics as columns, grouped by stage (tokenuni.tracking.experiment_tags)."""
    from mlflow.tracking import MlflowClient

    from tokenuni.tracking import runs_view_url

    experiment_id, runs, records = study_runs
    tags = MlflowClient(tracking_uri=server_study["uri"]).get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert {run.data.tags["tokenuni.stage"] for run in runs.values()} >= {"data", "geometry", "finetune", "figures"}
    finetune = next(run for run in runs.values() if run.data.tags["tokenuni.rule"] == "finetune")
    assert finetune.data.metrics["dev_main"] == finetune.data.metrics["final/accuracy"]
    metric = next(run for run in runs.values() if run.data.tags["tokenuni.rule"] == "metric")
    assert "token_uniformity_last_layer" in metric.data.metrics
    assert metric.data.tags["tokenuni.headline"] == finetune.data.tags["tokenuni.headline"] == "true"

    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{server_study['uri']}/")  # where `mlflow ui` / `mlflow server` opens
        page.get_by_text("Welcome to MLflow").first.wait_for()
        _close_assistant(page)
        _screenshot(page, "mlflow_home.png", tmp_path)
        # MLflow 3.17 opens experiments on its GenAI overview whatever mlflow.experimentKind says, unless its
        # "GenAI | Model training" switch says otherwise: the one click a user makes (the README says so)
        switch = page.get_by_text("Model training", exact=True)
        if switch.count():
            switch.first.click()
        experiment = page.get_by_role("link", name=server_study["experiment"], exact=True)
        if not experiment.count():  # not among the home page's recent experiments: the full list
            page.get_by_role("link", name="View all").first.click()
        experiment.first.click()
        page.wait_for_url(re.compile(rf".*#/experiments/{experiment_id}/runs.*"))
        job_key = next(key for key, record in records.items() if record["rule"] == "finetune")
        page.get_by_role("link", name=job_key, exact=True).first.wait_for()  # the runs table of the study
        # the description's link opens the shared view (a new tab, as MLflow opens description links)
        with context.expect_page() as opened:
            page.get_by_role("link", name="the runs table with the headline metrics, grouped by stage").first.click()
        view = opened.value
        view.set_default_timeout(TIMEOUT_MS)
        assert view.url.split("&searchFilter")[0].endswith(
            runs_view_url("", experiment_id).split("#", 1)[1]), view.url
        for column in ("token_uniformity_last_layer", "dev_main"):
            view.locator("[role=columnheader]", has_text=column).first.wait_for()
        for stage in ("geometry", "finetune"):  # the runs with headline values (no figure or data runs)
            view.get_by_text(f"Group: {stage}", exact=True).first.wait_for()
        assert view.get_by_text("Group: figures", exact=True).count() == 0
        # the metric job's value in its column (the grid cuts long numbers: compare the first digits)
        value = repr(metric.data.metrics["token_uniformity_last_layer"])[:6]
        view.get_by_text(re.compile(rf"^{re.escape(value)}")).first.wait_for()
        _close_assistant(view)
        _screenshot(view, "mlflow_landing.png", tmp_path)
    finally:
        context.close()
