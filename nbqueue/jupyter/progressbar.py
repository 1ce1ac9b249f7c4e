"""The ipywidgets progress bar that a blocking wait shows in the notebook cell that waits.

:func:`nbqueue.feedback.wait_feedback` creates it from its background thread after about a second of waiting,
and imports this module only in a kernel, so the core never imports ipywidgets.
"""

from __future__ import annotations

import ipywidgets
from IPython.display import display

from nbqueue.feedback import BarState

#: ipywidgets bar style for each final state; running states use the default blue.
BAR_STYLES = {"finished": "success", "failed": "danger", "interrupted": "warning", "timed out": "warning"}


class ProgressBar:
    """A bar whose description is the wait's state, with the counts and elapsed time in a label beside it."""

    def __init__(self) -> None:
        self.bar = ipywidgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, description="waiting", style={"description_width": "initial"}
        )
        self.label = ipywidgets.Label(value="")
        self.box = ipywidgets.HBox([self.bar, self.label])
        display(self.box)

    def update(self, state: BarState) -> None:
        self.bar.description = state.state
        # An unknown fraction leaves the bar empty; the label still shows the elapsed time.
        self.bar.value = state.fraction if state.fraction is not None else 0.0
        self.bar.bar_style = BAR_STYLES.get(state.state, "")
        self.label.value = state.detail

    def close(self, state: BarState) -> None:
        self.update(state)
