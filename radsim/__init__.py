"""radsim: what would a dynamic-depth (radial) transformer cost to serve on given hardware?

Hardware models (`hardware`), architecture specs (`arch`), a pure routed-batch cost model
(`cost`), a power model (`power`) and the static batch estimate (`estimate`).
"""

__version__ = "0.1.0"
