"""One file per op: reference, autograd Function, public function and registry entry.
Importing this package registers every op."""
from dlkern.ops.layer_norm import add_layer_norm, layer_norm  # noqa: F401
from dlkern.ops.rms_norm import add_rms_norm, rms_norm  # noqa: F401
from dlkern.ops.batch_norm import batch_norm  # noqa: F401
from dlkern.ops.group_norm import group_norm, group_norm_act  # noqa: F401
from dlkern.ops.instance_norm import instance_norm  # noqa: F401
from dlkern.ops.weight_norm import weight_norm  # noqa: F401
from dlkern.ops.selective_scan import selective_scan, selective_state_update  # noqa: F401
