"""One file per op: reference, autograd Function, public function and registry entry.
Importing this package registers every op."""
from dlkern.ops.layer_norm import add_layer_norm, layer_norm  # noqa: F401
from dlkern.ops.rms_norm import add_rms_norm, rms_norm  # noqa: F401
