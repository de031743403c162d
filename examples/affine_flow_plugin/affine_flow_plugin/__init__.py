"""affine-flow-plugin: a small conditional flow registered into BasicSR for flowprior-plugin's models.

Importing the package registers ``AffineFlowNet`` in BasicSR's ``ARCH_REGISTRY``; the ``basicsr``
command imports it through the ``basicsr.plugins`` entry point declared in ``setup.cfg``.
"""

from affine_flow_plugin import affine_flow_arch  # noqa: F401  (registers AffineFlowNet)
