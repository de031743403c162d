"""Stage 1: train any flow SR network by likelihood (negative log-likelihood in bits per pixel)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DataParallel, DistributedDataParallel

from flowprior_plugin.errors import OptionError
from flowprior_plugin.flow_protocol import FlowSRProtocol, HRWindow, check_flow_protocol
from flowprior_plugin.models.base_flow_model import BaseFlowModel


@MODEL_REGISTRY.register()
class FlowLikelihoodModel(BaseFlowModel):
    """Likelihood training of a flow SR network (``network_g``) that implements the flow protocol.

    Options beyond BasicSR's SRModel:
        train.nll_weight (float): Weight of the NLL loss. Default: 1.
        val.temperatures (list[float]): Temperatures decoded in validation. Default: [0.9].
        val.seed (int): Seed of the validation sampling. Default: 0.

    The flow's data-dependent initialisation (ActNorm) runs on the first training batch, before
    the network is wrapped for multi-GPU training, so every rank starts from rank 0's network.
    Each step calls the (possibly DDP-wrapped) network itself, ``net_g(lq, gt, dequantize=True,
    out_size=...)``: the protocol's ``forward`` is the likelihood, and DDP synchronises gradients
    only through ``forward``. Dequantisation follows the flow's release.
    """

    def __init__(self, opt):
        self._defer_ddp = bool(opt.get('dist')) and opt.get('is_train', False)
        super().__init__(opt)
        check_flow_protocol(self.get_bare_model(self.net_g), 'network_g')

    @property
    def flow(self) -> FlowSRProtocol:
        return self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)

    def model_to_device(self, net):
        # Multi-GPU: wrap after the first batch has initialised ActNorm (see _first_batch).
        if self._defer_ddp:
            return net.to(self.device)
        return super().model_to_device(net)

    def init_training_settings(self):
        self.net_g.train()
        train_opt = self.opt['train']
        self.setup_ema()
        self.nll_weight = float(train_opt.get('nll_weight', 1.0))
        self._first_batch_done = False
        self.setup_optimizers()
        self.setup_schedulers()

    def _first_batch(self) -> None:
        bare = self.get_bare_model(self.net_g)
        if bare.initialize_from_batch(self.lq, self.gt):
            get_root_logger().info('Flow data-dependent initialisation (ActNorm) done on the first batch.')
            if hasattr(self, 'net_g_ema'):
                self.model_ema(0)
        if self._defer_ddp:
            if torch.distributed.is_initialized():
                # DDP's constructor also broadcasts rank 0's state; doing it here keeps that explicit.
                for tensor in list(bare.parameters()) + list(bare.buffers()):
                    torch.distributed.broadcast(tensor.data, src=0)
            find_unused = self.opt.get('find_unused_parameters', False)
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            self.net_g = DistributedDataParallel(bare, device_ids=device_ids, find_unused_parameters=find_unused)
            self._defer_ddp = False
        elif self.opt['num_gpu'] > 1 and not isinstance(self.net_g, DataParallel):
            self.net_g = DataParallel(bare)
        self._first_batch_done = True

    def optimize_parameters(self, current_iter):
        if not self._first_batch_done:
            self._first_batch()
        self.optimizer_g.zero_grad()
        out_size = self._out_size()
        if isinstance(out_size, HRWindow) and isinstance(self.net_g, DataParallel):
            # DataParallel splits tensors but copies other objects whole to every GPU, so each
            # replica would get the windows of the whole batch; DDP gives each process its own batch.
            raise OptionError(
                'training on HR windows (ArbitraryScaleSRDataset) with num_gpu > 1 needs distributed training: '
                'torchrun --nproc_per_node=N -m flowprior_plugin train -opt ... --launcher pytorch'
            )
        # Call through the (possibly DDP-wrapped) module: forward(lq, gt) is the flow's nll.
        nll = self.net_g(self.lq, self.gt, dequantize=True, out_size=out_size).mean()
        self.apply_loss(self.nll_weight * nll, OrderedDict(l_nll=nll.detach()), current_iter)


# Its name until December 2026: option files that say ``model_type: FlowSRModel`` keep working.
MODEL_REGISTRY._do_register('FlowSRModel', FlowLikelihoodModel)
