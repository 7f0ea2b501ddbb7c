"""radsim: what would a dynamic-depth (radial) transformer cost to serve on given hardware?

The package follows the data flow: `spec` (devices and architectures) -> `routes` (which layers
tokens visit) -> `cost` (what a routed batch costs) -> `sim` (serving over time) -> `scenario` (one
validated description of a run) -> `study` (sweeps, plots, reports), with `measure`, `train` and
`models` beside them and `cli` on top. Importing `radsim` imports none of them.
"""

__version__ = "0.1.0"
