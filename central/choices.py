"""The values ``--device``, ``--mode`` and ``--data_type`` accept, in a module that needs no torch.

``central.device`` re-exports them; the launcher's parser reads them from here so that
``demo_bert.py -h`` answers without importing PyTorch.
"""
DEVICE_CHOICES = ("auto", "hpu", "cuda", "cpu")
MODE_CHOICES = ("eager", "graph", "lazy")
PRECISION_CHOICES = ("fp32", "bf16")
