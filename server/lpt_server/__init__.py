"""lpt_server: the HTTP server of lpt-serve (FastAPI app factory, batcher, adapter store).

    from lpt_server import Settings, create_app
    app = create_app(Settings(store="/tmp/store"))

Imports are lazy: `lpt classify` (which only dispatches to the client) must not pay for
importing torch.
"""
__version__ = "0.1.0"
__all__ = ["Settings", "create_app", "__version__"]


def __getattr__(name):
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "Settings":
        from .settings import Settings
        return Settings
    raise AttributeError(f"module 'lpt_server' has no attribute {name!r}")
