"""The DVC stages, one module each, all following one contract (:mod:`facepipe.stages.contract`).

``manifest`` -> ``extract`` -> ``freq`` -> ``shard`` -> ``train`` -> ``evaluate`` -> ``explain``. Each module holds its
pydantic parameter model (its ``params.yaml`` section), a ``run(...)`` and a ``fingerprint(cfg)`` =
hash(parameters, ``STAGE_VERSION``, the source of every facepipe module the stage imports). Per-item
caches are keyed by that fingerprint, so a code change DVC sees also redoes the stage's work.

This package imports none of its stages (importing one stage must not pull in the others' code).
"""

STAGES = ("manifest", "extract", "freq", "shard", "train", "evaluate", "explain")
"""Stage names in pipeline order; ``facepipe.stages.<name>`` is each one's module."""
