"""Find OFD tap points (pre-activation stage ends) in a model's FX graph, and capture them.

``find_taps`` (discover.py) traces a model (trace.py), propagates a sample input to learn every
tensor's shape, and picks, for each stride, the last node through which the whole computation
passes (a cut node, predicates.py); if that node is an activation, the tap is its input.
``attach_taps`` (capture.py) binds a regenerated forward to the original module; outputs,
parameter names and numerics are unchanged. ``TapExtractor`` (extract.py) runs a model only as
far as its last tap. Where FX cannot trace a model, or finds fewer than three stage ends, the
taps fall back to the outputs of the modules in timm's ``feature_info`` (modules.py), captured by
forward hooks.
"""
from .capture import attach_taps, capture_taps, detach_taps
from .discover import REFERENCE_SIZE, check_input_size, find_taps, graph_node_names, smallest_input_size
from .extract import TapExtractor
from .modules import ModuleTapRunner, module_taps
from .predicates import (ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES, PASSTHROUGH_MODULES,
                         activation_name, applies_norm, is_norm, is_passthrough)
from .tap import Tap
from .trace import TRACER_KEYS, SampleRunError, TraceFailure, qualified_name, trace

__all__ = [
    "Tap",
    "find_taps",
    "attach_taps",
    "detach_taps",
    "capture_taps",
    "TapExtractor",
    "ModuleTapRunner",
    "module_taps",
    "graph_node_names",
    "qualified_name",
    "smallest_input_size",
    "check_input_size",
    "trace",
    "SampleRunError",
    "TraceFailure",
    "REFERENCE_SIZE",
    "TRACER_KEYS",
    "ACTIVATION_FUNCTIONS",
    "ACTIVATION_METHODS",
    "ACTIVATION_MODULES",
    "PASSTHROUGH_MODULES",
    "activation_name",
    "applies_norm",
    "is_norm",
    "is_passthrough",
]
