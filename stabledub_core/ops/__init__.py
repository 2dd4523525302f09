from stabledub_core.ops.causal_conv import causal_conv1d, causal_conv1d_ref
from stabledub_core.ops.selective_scan import (ScanBackend, SelectiveScanInputError, selective_scan, selective_scan_chunked,
                             selective_scan_ref)

__all__ = ["ScanBackend", "SelectiveScanInputError", "causal_conv1d", "causal_conv1d_ref", "selective_scan",
           "selective_scan_chunked", "selective_scan_ref"]
