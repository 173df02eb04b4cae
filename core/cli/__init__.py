"""The ``kolk`` command line (``main.py``) and what only it uses: its subcommands
(``admin.py``, ``cert.py``, ``data.py``, ``policy.py``, ``smartmodule.py``), the local
cluster's start and stop (``local_cluster.py``), ``kolk demo`` and ``kolk bench``.

Outside the library's import path: ``import kolk`` loads nothing from here. It may import
every other room.
"""
