"""Source networks: registry, weights, preprocessing and representation layers."""

from transferlab.sources.base import Layer, Source
from transferlab.sources.preprocessing import Preprocessing
from transferlab.sources.registry import list_builtin_sources, load_source, register_source_kind

__all__ = ["Layer", "Preprocessing", "Source", "list_builtin_sources", "load_source", "register_source_kind"]
