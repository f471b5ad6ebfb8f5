"""The final stage: pick the best trial, Table 5 with post-processing, export, bootstrap promotion, the report.

``selection`` hands a sweep's pick (or a checkpoint) to ``stage.finalize``, which runs the recorded steps
(``record``) in order: ``table5`` (on ``test_split``), ``decision`` and ``promotion`` (``promotion``, on
``bootstrap``), ``export`` (``export_folder``, on ``export``), ``finalize_run`` / ``logged`` / ``finished``
(``stage_run``) and ``registration`` (``registration``); ``state`` holds what the steps pass along.
``report`` and ``paper_tables`` write the reproduction report.
"""
