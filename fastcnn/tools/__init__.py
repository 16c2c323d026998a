"""The programs built on the fastcnn library: the ``fastcnn`` command line and its subcommands.

* :mod:`~fastcnn.tools.cli`: the ``fastcnn`` command (also ``python -m fastcnn``);
* :mod:`~fastcnn.tools.check`: ``fastcnn check``, every op forward and backward against PyTorch;
* :mod:`~fastcnn.tools.bench`: ``fastcnn bench``, fastcnn timed against PyTorch eager and torch.compile;
* :mod:`~fastcnn.tools.demo`: ``fastcnn demo``, a small CNN trained on scikit-learn's digits;
* :mod:`~fastcnn.tools.train`: ``fastcnn train``, fine-tuning a model-zoo network;
* :mod:`~fastcnn.tools.references`: PyTorch's side of every comparison and the tolerances, shared by
  check, bench and the tests;
* :mod:`~fastcnn.tools.devices`: the ``--device`` choice the programs share.

The library (``fastcnn.ops``, ``nn``, ``convert``, ``fuse``, ``models``, ...) never imports from here.
"""
