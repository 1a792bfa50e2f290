"""Shipped learned components (package data: ``NAME.safetensors`` + ``NAME.json``).

This module re-exports the registry of `lightning_automl.core.pretrained`:

```python
from lightning_automl.pretrained import list_pretrained

for card in list_pretrained():
    print(card.name, card.method, card.metrics)
```
"""

from lightning_automl.core.pretrained import (
    FORMAT_VERSION,
    SHIPPED_DIR,
    PretrainedCard,
    PretrainedError,
    PretrainedMixin,
    list_pretrained,
    read_card,
    read_pretrained,
    write_pretrained,
)

__all__ = [
    "FORMAT_VERSION",
    "SHIPPED_DIR",
    "PretrainedCard",
    "PretrainedError",
    "PretrainedMixin",
    "list_pretrained",
    "read_card",
    "read_pretrained",
    "write_pretrained",
]
