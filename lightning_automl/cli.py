"""The ``lightning-automl`` command: a LightningCLI over any LightningModule and datamodule.

Every job (a baseline, a learned component's meta-training, a search) is a recipe:

```bash
lightning-automl fit -c recipes/quickstart.yaml
lightning-automl fit -c recipes/mnist_mlp.yaml --trainer.max_epochs 3
lightning-automl fit --help
```
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import ArgsType, LightningCLI

from lightning_automl import __version__

__all__ = ["build_cli", "main"]


def build_cli(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv``) and run the subcommand; return the CLI.

    Model and data are given by ``class_path`` (subclass mode), so any LightningModule and
    LightningDataModule works, ours or the user's. ``run=False`` only builds the objects.
    """
    # Lightning itself calls jsonargparse APIs deprecated in jsonargparse 4.49; those warnings
    # are not for our users to act on. JSONARGPARSE_DEPRECATION_WARNINGS=all shows them again.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    return LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "lightning_automl: learned training components.",
            "version": __version__,
        },
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point of the ``lightning-automl`` command."""
    build_cli()
