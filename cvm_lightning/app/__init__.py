"""The ``cvm`` program, built on the library: its command lines, the settings of a run, and the comparison harness.

- command lines: :mod:`~cvm_lightning.app.cli` (``cvm``) and
  :mod:`~cvm_lightning.app.lightning_cli` (``cvm fit|validate|test``);
- the settings of a run, checked before torch loads:
  :mod:`~cvm_lightning.app.run_config`, :mod:`~cvm_lightning.app.signatures`,
  :mod:`~cvm_lightning.app.strategies`;
- the comparison harness: :mod:`~cvm_lightning.app.runner`,
  :mod:`~cvm_lightning.app.sweep`, :mod:`~cvm_lightning.app.reporting`
  (with :mod:`~cvm_lightning.app.tables` and, for lifetime streams,
  :mod:`~cvm_lightning.app.lifetime_report`), :mod:`~cvm_lightning.app.resources`.

Nothing in the library imports this package.
"""
