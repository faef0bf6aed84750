"""The DVC stages, one module each, all following one contract (:mod:`facepipe.stages.contract`).

``example`` -> ``manifest`` -> ``extract`` -> ``freq`` -> ``shard`` -> ``train`` -> ``evaluate`` -> ``benchmark`` ->
``explain``. Each module holds its pydantic parameter model (its ``params.yaml`` section), a ``run(...)`` and a
``fingerprint(cfg)`` = hash(parameters, ``STAGE_VERSION``, the source of every facepipe module the stage
imports). Per-item caches are keyed by that fingerprint, so a code change DVC sees also redoes the stage's work.

This package imports none of its stages (importing one stage must not pull in the others' code).
"""

STAGES = ("example", "manifest", "extract", "freq", "shard", "train", "evaluate", "benchmark", "explain")
"""The stages in pipeline order: ``dvc.yaml`` has exactly these stages in this order, the CLI one command of each
name (listed under "Pipeline stages" in ``facepipe --help``), and ``facepipe.stages.<name>`` is each one's module
(its code closure is the stage's ``dvc.yaml`` code deps, ``scripts/dvc_deps.py``)."""

STAGE_MODULES = {name: f"{__name__}.{name}" for name in STAGES}
"""Stage name -> the module whose import closure is the stage's code."""
