"""Training and evaluation of zoo detectors on streamed shards (``engine``, ``evaluate``, ``metrics``)."""
