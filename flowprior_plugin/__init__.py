"""flowprior-plugin: flow-based super-resolution with the learned prior (Tsao et al., CVPR 2024).

``import flowprior_plugin`` registers every network, loss, metric, dataset and model of this
package into BasicSR's registries, so BasicSR option files can name them by ``type``.
"""

from flowprior_plugin.torchvision_compat import install_functional_tensor_stand_in

# Must run before anything imports basicsr (see torchvision_compat for why).
install_functional_tensor_stand_in()

from flowprior_plugin import archs, data, losses, metrics, models  # noqa: E402,F401  (registers)
from flowprior_plugin.basicsr_patches import apply_basicsr_patches  # noqa: E402

apply_basicsr_patches()

__version__ = '0.1.0'
