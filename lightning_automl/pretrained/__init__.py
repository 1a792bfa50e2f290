"""Shipped learned components (package data: ``NAME.safetensors`` + ``NAME.json``).

This module re-exports the registry of `lightning_automl.core.pretrained`:

```python
from lightning_automl.pretrained import list_pretrained

for card in list_pretrained():
    print(card.name, card.method, card.metrics)
```
"""

from lightning_automl.core import pretrained as _registry
from lightning_automl.core.pretrained import *  # noqa: F403  (the registry's public names)

__all__ = _registry.__all__
