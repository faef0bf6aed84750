"""Parameters of the frequency views (``params.yaml`` section ``freq``), shared by the ``freq`` stage and by
the views the loader computes during training and evaluation."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from facepipe.config import Section

VIEWS = ("dct", "dct_bands", "block_dct", "fft", "phase", "srm")
"""Every view name (see :mod:`facepipe.freq`)."""


class FreqConfig(Section):
    """Parameters of the frequency views (section ``freq``).

    ``views``: which views the ``freq`` stage stores per crop as float16 (default none: the loader
    computes any view on the fly after augmentation; store them only when a view is expensive for your
    training machine, see the README for the bytes per view). ``dct_log``: the ``dct`` view is
    ``log(|X| + eps)``. ``bands``: FAD low/mid edges as fractions of the crop side on ``i + j`` (F3Net's
    1/2.82 and 1/2). ``block``: block side for ``block_dct``. ``srm_truncate``: SRM clip.
    """

    views: tuple[str, ...] = ()
    dct_log: bool = True
    bands: tuple[float, float] = (1 / 2.82, 1 / 2)
    block: int = Field(8, ge=2)
    srm_truncate: Optional[float] = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _known_views(self) -> "FreqConfig":
        bad = [v for v in self.views if v not in VIEWS]
        if bad:
            raise ValueError(f"unknown views {bad}; known: {list(VIEWS)}")
        if not 0 < self.bands[0] < self.bands[1]:
            raise ValueError(f"bands must satisfy 0 < low < high, got {self.bands}")
        return self

    def view_params(self) -> dict:
        """The parameters that change a view's numbers (everything but which views are stored)."""
        return self.model_dump(exclude={"views"})
