"""``python -m lightning_automl`` is the ``lightning-automl`` command."""

from lightning_automl.cli import main

if __name__ == "__main__":
    main()
