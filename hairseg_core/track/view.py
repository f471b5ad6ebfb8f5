"""The MLflow UI's saved view a sweep is compared in, and the addresses that open the UI on it.

A view is an experiment tag (``mlflow.sharedViewState.<key>``) holding the runs page's state as JSON;
``<ui>/#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from hairseg_core.track.tags import TAG_EARLY_STOPPED, TAG_EPOCHS_RUN, TAG_SWEEP

#: The id of the chart section comparing a sweep's trials.
_SECTION = "hairseg-sweep-comparison"


def view_key(sweep: str) -> str:
    """The share key of a sweep's saved UI view: its name, with characters a tag key or URL cannot hold replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", sweep)


def view_envelope(sweep: str, space: Mapping[str, Any]) -> str:
    """The experiment tag's value: the view's name and times around :func:`sweep_view_state` (JSON)."""
    state = sweep_view_state(sweep, space)
    now = int(time.time() * 1000)
    return json.dumps({"name": f"sweep {sweep}", "createdAt": now, "updatedAt": now, "state": state})


def _col(kind: str, key: str) -> str:
    """A runs-table column as the UI names it (``metrics.`val_miou```)."""
    return f"{kind}.`{key}`"


def _chart(kind: str, uuid: str, **fields: Any) -> dict[str, Any]:
    """One chart of the comparison section, with the fields every chart kind needs."""
    base = {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": _SECTION}
    return {**base, "deleted": False, "isGenerated": False, **fields}


def _comparison_charts(metric: str, specs: Mapping[str, Any], params: list[str]) -> list[dict[str, Any]]:
    """The objective per epoch, parameters vs the best objective, and the best objective per trial."""
    numeric = [k for k in params if isinstance(specs[k], Mapping) and specs[k].get("type") in ("float", "int")]
    best = f"best_{metric}"
    charts = [
        _chart(
            "LINE",
            f"hairseg-line-{key}",
            metricKey=key,
            displayName=f"{key} per epoch, every trial",
            xAxisKey="step",
            scaleType="linear",
            xAxisScaleType="linear",
            lineSmoothness=0,
            useGlobalXaxisKey=False,
            useGlobalLineSmoothing=False,
        )
        for key in dict.fromkeys([metric, "val_miou"])
    ]
    if params:
        charts.append(
            _chart(
                "PARALLEL",
                "hairseg-parallel",
                displayName=f"sampled parameters vs {best}",
                selectedParams=params[:8],
                selectedMetrics=[best],
                showAllRuns=False,
            )
        )
    if numeric:
        charts.append(
            _chart(
                "SCATTER",
                "hairseg-scatter",
                displayName=f"{numeric[0]} vs {best}",
                xaxis={"key": numeric[0], "type": "PARAM"},
                yaxis={"key": best, "type": "METRIC"},
            )
        )
    charts.append(_chart("BAR", f"hairseg-bar-{best}", metricKey=best, displayName=f"{best} per trial"))
    return charts


def sweep_view_state(sweep: str, space: Mapping[str, Any]) -> str:
    """The UI state (JSON) of the view a sweep is compared in; see :meth:`SweepRuns.save_sweep_view`.

    Field names are those of MLflow 3.17's runs page (``ExperimentPageUIState`` and the search facets it
    keeps in a shared view; the UI fills in defaults for anything left out). The first chart section
    compares every trial: the objective per epoch, parameters vs the best objective (parallel coordinates
    and a scatter of the first sampled parameter), and the best objective per trial; the UI adds its own
    charts for the remaining metrics below.
    """
    metric, mode = str(space.get("metric", "val_miou")), str(space.get("mode", "max"))
    specs = space.get("params", {})
    params = [k for k in specs if "@" not in k]
    best = f"best_{metric}"
    # Few metric columns, so the sampled values fit on a screen: the UI orders columns itself (attributes,
    # metrics and parameters alphabetically, tags) and the table scrolls sideways beyond its width. The
    # dataset is on each run's page and in the Datasets filter; the other metrics in the chart view.
    columns = [_col("metrics", k) for k in dict.fromkeys([best, "best_val_miou", metric, "val_miou"])]
    columns += [_col("params", k) for k in params]
    columns += [_col("tags", k) for k in (TAG_EPOCHS_RUN, TAG_EARLY_STOPPED)]
    state = {
        "searchFilter": f"tags.`{TAG_SWEEP}` = '{sweep}'",
        "orderByKey": _col("metrics", best),
        "orderByAsc": mode == "min",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(dict.fromkeys(columns)),
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": _comparison_charts(metric, specs, params),
        "compareRunSections": [
            {
                "uuid": _SECTION,
                "name": f"Sweep {sweep}: trials compared",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "isAccordionReordered": False,
        "hideEmptyCharts": True,
        "useGroupedValuesInCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    return json.dumps(state)


def view_url(ui: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The address of a sweep's saved view in the UI at ``ui`` (``http://127.0.0.1:5000``).

    ``workflowType=machine_learning``: MLflow 3.17's UI picks the GenAI or the model-training layout
    from a switch it keeps per browser (GenAI by default), not from the experiment's kind tag.
    """
    mode = "&compareRunsMode=CHART" if charts else ""
    query = f"workflowType=machine_learning&viewStateShareKey={key}{mode}"
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def ui_address(tracking_uri: str) -> str:
    """Where the UI of this store is: the tracking server itself, or what :func:`ui_command` starts."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
