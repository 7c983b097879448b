"""Runnable examples of distmix, installed with it as ``distmix.examples``.

Each example is a script a user copies from (``examples/README.md`` lists
them); each has a ``main(argv=None)`` and flags for its sizes, and runs at a
small size by default::

    python examples/out_of_core.py                  # from a checkout
    python -m distmix.examples.out_of_core --help   # from an installed distmix

``distmix demo`` runs :mod:`distmix.examples.out_of_core`. Nothing else in
the package imports them.
"""
