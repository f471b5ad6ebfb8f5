"""Step ``export``: the webcam model (``exports/<sweep>/model.{ts,onnx,json}``), swapped in as one folder.

TorchScript and ONNX with a parity check and a metadata file, everything the webcam app needs; the
letterbox size defaults to the trained scale and ``model.json`` records it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hairseg_core.final.export import export_all
from hairseg_core.final.record import pause_point
from hairseg_core.final.state import FinalStage, jsonable
from hairseg_core.final.table5 import TABLE_METRICS


def export_atomically(export_dir: Path, write: Any, table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the export into a temporary folder beside ``export_dir``, then swap it in.

    A reader (the webcam app, the next step) sees the old folder or the new one, never a half-written mix;
    a kill leaves at most a ``.<sweep>.tmp-*`` folder, which the next export removes.
    """
    export_dir = Path(export_dir)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in export_dir.parent.glob(f".{export_dir.name}.*-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.tmp-", dir=export_dir.parent))
    try:
        export = write(tmp)
        if table is not None:
            (tmp / "postprocessing.json").write_text(json.dumps(table, indent=2))
        if export_dir.is_dir() and (export_dir / "report.html").is_file() and not (tmp / "report.html").exists():
            shutil.copy2(export_dir / "report.html", tmp / "report.html")  # the report is rebuilt later
        pause_point("export_written")
        old = None
        if export_dir.exists():
            old = export_dir.parent / f".{export_dir.name}.old-{os.getpid()}"
            os.replace(export_dir, old)
        os.replace(tmp, export_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return export


def write_export(stage: FinalStage) -> None:
    """Step ``export``: export the network (or keep the recorded export whose folder is still there); say where."""
    exported = stage.record.get("export")
    if exported is not None and (stage.export_dir / "model.onnx").is_file():
        stage.export = exported["export"]
    else:
        baseline = stage.table[0]
        stage.export = export_atomically(
            stage.export_dir,
            lambda out: export_all(
                stage.model,
                out,
                input_size=stage.settings.export_size,  # None: the trained scale
                metrics={k: baseline[k] for k in TABLE_METRICS},
                sample_image=stage.test.sample(0)[0],
                train_scale=stage.scale,
            ),
            stage.table,
        )
        stage.record.mark("export", export=jsonable(stage.export))
    print(
        f"\nexported webcam model to {stage.export_dir}/ (model.onnx, model.ts, model.json): letterbox "
        f"{stage.export['input_size']} px, trained at {stage.scale} px"
    )
