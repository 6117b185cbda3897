"""The associative memory: a layer seen as keys -> values, its key statistics ``C``, directions ``D``
and the closed-form solve for ``Lambda``. Imports nothing above it (no edits, rules, Hub or adapters)."""
