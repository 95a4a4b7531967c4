"""Request traces: real (Azure 2023, Mooncake FAST'25) and synthetic -> list[RequestSpec]."""
from traces.config import (
    LENGTH_KINDS,
    REAL_SOURCES,
    SOURCES,
    SYNTHETIC_SOURCES,
    ClassesConfig,
    LengthConfig,
    SloConfig,
    TraceConfig,
)
from traces.errors import TraceError
from traces.loader import load_trace
from traces.spec import REQUEST_CLASSES, RequestSpec

__all__ = [
    "LENGTH_KINDS",
    "REAL_SOURCES",
    "REQUEST_CLASSES",
    "SOURCES",
    "SYNTHETIC_SOURCES",
    "ClassesConfig",
    "LengthConfig",
    "RequestSpec",
    "SloConfig",
    "TraceConfig",
    "TraceError",
    "load_trace",
]
