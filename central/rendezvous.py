"""Where the processes of a job meet unless the environment says otherwise: MASTER_ADDR and MASTER_PORT.

Declared here once: the launcher exports them to the processes it starts, and ``central.distributed``
falls back on them. No torch import, so the launcher reads them without loading PyTorch.
"""
DEFAULT_MASTER_ADDR = "localhost"
DEFAULT_MASTER_PORT = "12345"
