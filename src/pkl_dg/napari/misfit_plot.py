"""The Compare widget's plot of the data misfit per step (matplotlib in Qt).

Where matplotlib's Qt backend cannot be loaded (a Qt binding it does not support, or a
broken install) the plot's place holds a label saying so, and the rest of the widget works.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QLabel, QWidget

from pkl_dg.napari.controls import short_method_label


class MisfitPlot:
    """A matplotlib canvas plotting each method's misfit (NLL) per step, above the lowest
    misfit any method reached (symmetric-log axis).

    Attributes
    ----------
    widget : QWidget
        What to put in the layout: the canvas, or a label saying why there is none.
    canvas : FigureCanvasQTAgg or None
        The canvas; None when matplotlib's Qt backend could not be loaded.
    """

    def __init__(self) -> None:
        self.canvas: Any = None
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError as exc:  # not installed, or no backend for this Qt binding
            self.widget: QWidget = QLabel(
                f"No misfit plot: matplotlib's Qt backend is not available ({exc}). "
                "Install matplotlib to see it.")
            self.widget.setWordWrap(True)
            return
        self._figure = Figure(figsize=(3, 2))
        self.canvas = FigureCanvasQTAgg(self._figure)
        self.canvas.setMinimumHeight(200)  # room for the two-line axis label
        self.widget = self.canvas

    def draw(self, misfit: dict[str, list[float | None]]) -> str | None:
        """Plot one line per method (steps without a misfit readout are skipped).

        Parameters
        ----------
        misfit : dict of str to list of float or None
            Method key → misfit per step (:attr:`pkl_dg.compare.Comparison.misfit`).

        Returns
        -------
        str or None
            None when drawn (or when there is no canvas); else why the plot was not drawn,
            for the caller to show.
        """
        if self.canvas is None:
            return None
        try:
            self._figure.clear()
            ax = self._figure.add_subplot(111)
            # each value at its own step (a readout is not offered at every RL iteration),
            # drawn above the lowest misfit of all methods: the NLL itself is a large
            # number (−1.006e8 on a DAPI plane) whose differences are what matter
            points = {m: [(i + 1, v) for i, v in enumerate(nll) if v is not None]
                      for m, nll in misfit.items()}
            values = [v for pts in points.values() for _, v in pts]
            lowest = min(values) if values else 0.0
            for method, pts in points.items():
                if pts:
                    steps, vals = zip(*pts)
                    ax.plot(steps, [v - lowest for v in vals], marker=".", markersize=3,
                            label=short_method_label(method))
            ax.set_xlabel("step", fontsize=7)
            ax.set_ylabel("misfit (NLL)\nabove the lowest", fontsize=7)  # one line was cut
            ax.set_yscale("symlog", linthresh=1.0)
            ax.tick_params(labelsize=6)
            if ax.lines:
                ax.legend(fontsize=6)
            self._figure.tight_layout()
            self.canvas.draw_idle()
        except (ValueError, TypeError, RuntimeError) as exc:
            # values matplotlib cannot plot, or the canvas deleted with a closed widget
            return f"Misfit plot not drawn: {type(exc).__name__}: {exc}"
        return None
