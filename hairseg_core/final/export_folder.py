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
from hairseg_core.final.export_check import calibration_images, evaluate_export, record_export_metrics
from hairseg_core.final.record import pause_point
from hairseg_core.final.state import FinalStage, jsonable
from hairseg_core.final.table5 import TABLE_METRICS
from hairseg_core.text_table import format_table


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


#: Test portraits the export's per-frame latency cycles through (``export.frame_latency_ms``).
LATENCY_FRAMES = 20


def write_export(stage: FinalStage) -> None:
    """Step ``export``: export the network (or keep the recorded export whose folder is still there); say where.

    With ``finalize.quantize: int8`` the folder also holds the int8 graph, and its accuracy on every test
    source is measured before the folder is swapped in (``export_check``)."""
    exported = stage.record.get("export")
    if exported is not None and (stage.export_dir / "model.onnx").is_file():
        stage.export = exported["export"]
    else:
        stage.export = export_atomically(stage.export_dir, lambda out: _write(stage, out), stage.table)
        stage.record.mark("export", export=jsonable(stage.export))
    files = "model.int8.onnx, model.onnx" if stage.export.get("quantize") == "int8" else "model.onnx"
    print(
        f"\nexported webcam model to {stage.export_dir}/ ({files}, model.ts, model.json): letterbox "
        f"{stage.export['input_size']} px, trained at {stage.scale} px"
    )
    latency = stage.export.get("latency_ms") or {}
    if "frame_1_thread" in latency:
        print(f"per frame as the webcam app runs it, one thread: {latency['frame_1_thread']:.2f} ms (median)")
    if stage.export.get("test"):
        title = "the exported int8 graph on every test source (fp32_miou: the eager network, Table 5)"
        print(format_table(stage.export["test"], title=title))


def _write(stage: FinalStage, out: Path) -> dict[str, Any]:
    """The export into ``out``; for int8, calibrated on training images and checked on the test sources."""
    settings, baseline = stage.settings, stage.table[0]
    int8 = settings.quantize == "int8"
    export = export_all(
        stage.model,
        out,
        input_size=settings.export_size,  # None: the trained scale
        metrics={k: baseline[k] for k in TABLE_METRICS},
        sample_image=stage.test.sample(0)[0],
        train_scale=stage.scale,
        quantize=settings.quantize,
        calibration=calibration_images(stage.train_config, settings.calibration_images) if int8 else (),
        frames=[stage.test.sample(i)[0] for i in range(min(LATENCY_FRAMES, len(stage.test)))],
    )
    if int8:
        export["test"] = evaluate_export(out, stage)
        record_export_metrics(out, export["test"])
    return export
