"""``python -m syncengine.cli``: the same as the ``syncengine`` console script."""

from __future__ import annotations

from syncengine.cli.app import main

if __name__ == "__main__":
    main()
