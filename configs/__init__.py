"""The shipped recipes (one YAML per model and budget); installed as ``thinkless_lite.recipes``, addressed by name (``--config mini``)."""
