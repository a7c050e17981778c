"""The stages of a study as functions that return a :class:`tokenuni.results.StageResult`.

Each stage does its work from arguments (specs, paths, options), writes its outputs, and returns what it did as
data; it never talks to MLflow. ``tokenuni <stage>`` (:mod:`tokenuni.cli`) parses the command line, opens the job's
run, calls the stage and hands the result to :func:`tokenuni.tracking.record`; a notebook calls the same function
and may record the result the same way (``record(result, record_path=..., rule=..., params=...)``).

* :mod:`tokenuni.stages.geometry`: ``corpus``, ``embed``, ``stats``, ``metric``, ``projection``;
* :mod:`tokenuni.stages.sts`: ``sentences``, ``sts``, ``sts_table``;
* :mod:`tokenuni.stages.finetune`: ``finetune``, ``finetune_table``.
"""
