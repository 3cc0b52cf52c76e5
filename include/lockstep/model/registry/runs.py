"""Run logging for the other pipelines, and links into the MLflow UI.

The drift check, the early verdict and the rollout review record their runs through the
registry, so MLflow is reached from one package (the ``mlflow-seam`` import contract):
``log_run`` and ``latest_run_tags`` for runs of other experiments, ``log_version_metrics``
for figures measured after registration, ``run_params`` for what a version was trained
with, ``ui_links`` for a reviewer's browser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from lockstep.core import clock
from lockstep.core.config import alert_settings, settings
from lockstep.model.registry.store import quote_value
from lockstep.model.registry.tags import ModelVersionInfo, param_value
from lockstep.model.registry.versions import RegistryVersions


class RunsMixin(RegistryVersions):
    """Runs of any experiment in the registry's store, and browser links to them."""

    def ui_links(
        self,
        info: ModelVersionInfo,
        artifact_paths: list[str] | tuple[str, ...] = (),
        *,
        drift_run_id: str | None = None,
    ) -> dict[str, str]:
        """Browser links (MLflow UI, Lockstep page) for a version: its page, run, model, files.

        Built from ``LOCKSTEP_MLFLOW_UI_URL`` and ``LOCKSTEP_AIRFLOW_UI_URL``; an artifact
        path (e.g. ``plots/evaluation.png``) becomes a link to that file on the run page;
        ``drift_run_id`` (the drift check that started the training) a link as ``drift_run``.
        """
        ui = settings().mlflow_ui_url.rstrip("/")
        links = {
            "version": f"{ui}/#/models/{self.model_name}/versions/{info.version}",
            "lockstep": f"{alert_settings().airflow_ui_url}/lockstep/",
        }
        if not info.run_id:
            return links
        try:
            run = self._client().get_run(info.run_id)
        except mlflow.MlflowException as exc:
            raise self._failed(f"read run {info.run_id}", exc) from exc
        run_page = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{info.run_id}"
        links["run"] = run_page
        model_id = _model_id_of(info.source)
        if model_id:
            links["logged_model"] = f"{ui}/#/experiments/{run.info.experiment_id}/models/{model_id}"
        for path in artifact_paths:
            links[path] = f"{run_page}/artifactPath/{path}"
        if drift_run_id:
            links["drift_run"] = self._run_page(ui, drift_run_id)
        return links

    def _run_page(self, ui: str, run_id: str) -> str:
        """A run's page in the MLflow UI (the direct route when the run cannot be read)."""
        try:
            return f"{ui}/#/experiments/{self._client().get_run(run_id).info.experiment_id}/runs/{run_id}"
        except mlflow.MlflowException:
            return f"{ui}/#/runs/{run_id}"

    def run_params(self, run_id: str | None) -> dict[str, str]:
        """The params of a run ({} without one): what a version was trained with."""
        if not run_id:
            return {}
        try:
            return dict(self._client().get_run(run_id).data.params)
        except mlflow.MlflowException as exc:
            raise self._failed(f"read run {run_id}", exc) from exc

    # --- other experiments (added for the rollout review, issue 11) ----------------------

    def latest_run_tags(self, experiment: str) -> tuple[str, dict[str, str]] | None:
        """The id and tags of the newest run of ``experiment``; None when it has no runs.

        The rollout review shows the latest drift check (experiment ``lockstep-drift``)
        beside the evaluation figures; it reads it here so MLflow is called in one module.
        """
        client = self._client()
        try:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                return None
            runs = client.search_runs(
                [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
            )
        except mlflow.MlflowException as exc:
            raise self._failed(f"read the latest run of experiment {experiment!r}", exc) from exc
        if not runs:
            return None
        return runs[0].info.run_id, dict(runs[0].data.tags)

    def log_run(
        self,
        experiment: str,
        run_name: str,
        *,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        params: Mapping[str, Any],
        files: Mapping[str, Path],
        once_per: tuple[str, str] | None = None,
    ) -> tuple[str, str, bool]:
        """One finished run in ``experiment``: tags, metrics, params and files (artifact folder -> path).

        ``once_per=(tag, value)``: a finished run already tagged so is returned instead of
        logging a second one, so a retried Airflow task does not duplicate the record.
        Returns (run id, experiment id, reused). A failure part-way marks the run FAILED.
        """
        from mlflow.entities import Metric, Param, RunTag

        client = self._client()
        experiment_id = self._experiment_id(experiment)
        try:
            if once_per is not None:
                tag, value = once_per
                found = client.search_runs(
                    [experiment_id],
                    filter_string=f"tags.`{tag}` = '{quote_value(value)}' and attributes.status = 'FINISHED'",
                    max_results=1,
                )
                if found:
                    return found[0].info.run_id, experiment_id, True
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        except mlflow.MlflowException as exc:
            raise self._failed(f"start a run in experiment {experiment!r}", exc) from exc
        try:
            now_ms = int(clock.now().timestamp() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
                params=[Param(k, param_value(v)) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in {**tags, **({once_per[0]: once_per[1]} if once_per else {})}.items()],
            )
            for folder, path in files.items():
                client.log_artifact(run_id, str(path), artifact_path=folder)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return run_id, experiment_id, False

    def log_version_metrics(self, version: str | int, metrics: Mapping[str, float]) -> str | None:
        """Metrics on the run that registered ``version``; its run id, or None when it has no run.

        Added for the early verdict (issue 14): figures measured after registration (during
        the re-embed) belong beside the version's training figures. A finished run takes
        metrics too; logging again (a retried task) adds a later value under the same key.
        """
        from mlflow.entities import Metric

        info = self.get_version(version)
        if not info.run_id or not metrics:
            return info.run_id
        now_ms = int(clock.now().timestamp() * 1000)
        try:
            self._client().log_batch(info.run_id, metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()])
        except mlflow.MlflowException as exc:
            raise self._failed(f"log metrics on the run of version {info.version}", exc) from exc
        return info.run_id


def _model_id_of(source: str) -> str | None:
    """The LoggedModel id in a version's source (``models:/m-...``), if it has one."""
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", source or "")
    return match.group(1) if match else None
