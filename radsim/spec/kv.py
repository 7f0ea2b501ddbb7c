"""KV policies: what a token that skips a layer leaves in that layer's KV cache.

- ``none``: nothing; later tokens attend only to the tokens that visited the layer.
- ``copy``: K/V projected from the skipper's current hidden state (CALM-style), so the cache stays
  complete.
- ``compute``: attention runs for every token in every layer and only the MLP is skipped (DLO).

The one list of them, used by the models, the trace schema, the cost model and the scenario.
"""

from __future__ import annotations

KV_POLICIES = ("none", "copy", "compute")
