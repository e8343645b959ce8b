"""``python -m conveyor``: the same command line as the ``conveyor`` script.

The guard matters: worker processes never import ``__main__`` (they get their stage
through cloudpickle), but anything that does must not start the command again.
"""

from __future__ import annotations

from conveyor._cli import main

if __name__ == "__main__":
    main()
