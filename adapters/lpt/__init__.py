"""lpt: Late Prompt Tuning on a frozen backbone, and the engine that mixes tasks in one pass.

No HTTP and no asyncio in here: the server (lpt_server) builds on this package.
"""
from .adapter import AdapterError, AdapterFile, LatePrompt, load_adapter, new_adapter, read_adapter, save_adapter, validate
from .backbone import Backbone
from .config import AdapterConfig
from .engine import Engine, Prediction, Row, RowError

__all__ = [
    "AdapterConfig", "AdapterError", "AdapterFile", "Backbone", "Engine", "LatePrompt", "Prediction",
    "Row", "RowError", "load_adapter", "new_adapter", "read_adapter", "save_adapter", "validate",
]
__version__ = "0.1.0"
