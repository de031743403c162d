"""Stage 2: train the learned prior on a frozen flow (Tsao et al., CVPR 2024).

The latent module ``network_g`` predicts latents from the LR image and an initial prior z0; the
frozen flow ``network_flow`` decodes them. Only the latent module is trained, saved and resumed;
the flow's weights are never changed and never written into our checkpoints.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor

from flowprior_plugin.errors import OptionError
from flowprior_plugin.flow_protocol import OutputSize, check_flow_protocol
from flowprior_plugin.models.flow_base import FlowBaseModel

INITIAL_PRIORS = ('encoded_upsample', 'zeros', 'gaussian')
PRIOR_METHOD = 'prior'


@MODEL_REGISTRY.register()
class FlowPriorModel(FlowBaseModel):
    """Learned prior on any registered flow SR network, which stays frozen.

    Options:
        network_flow (dict): The flow (any arch implementing the flow protocol).
        path.pretrain_network_flow (str): Its weights. ``param_key_flow`` (Default: 'params'; use
            ``~`` for the official raw SRFlow files) and ``strict_load_flow`` (Default: true).
        network_g (dict): The latent module, e.g. ``{type: LatentPriorNet, generator: {type: UNet}}``;
            its ``latent_channels`` are taken from the flow.
        initial_prior (dict): ``{type: encoded_upsample}`` (Default, as released),
            ``{type: zeros}`` or ``{type: gaussian, temperature: 0.8}`` (the paper's ablation).
        train.latent_opt / train.perceptual_opt: loss options; at least one is required.
        val.temperatures (list[float]): Temperature sampling compared with the prior. Default: none.
    """

    def __init__(self, opt):
        # BaseModel's init only: SRModel's would build network_g before we can ask the flow for
        # its latent levels.
        BaseModel.__init__(self, opt)
        self.net_flow = self._build_frozen_flow()
        self.opt['network_g'] = self._complete_prior_options(self.opt['network_g'])
        self.net_g = build_network(self.opt['network_g'])
        self.net_g = self.model_to_device(self.net_g)
        self.print_network(self.net_g)
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None:
            param_key = self.opt['path'].get('param_key_g', 'params')
            self.load_network(self.net_g, load_path, self.opt['path'].get('strict_load_g', True), param_key)
        self.initial_prior_opt = self._initial_prior_options(self.opt.get('initial_prior') or {})
        if self.is_train:
            self.init_training_settings()

    # ---------------------------------------------------------------- construction
    def _build_frozen_flow(self):
        if 'network_flow' not in self.opt:
            raise OptionError('FlowPriorModel needs a network_flow section (the frozen flow SR network)')
        flow = build_network(self.opt['network_flow'])
        check_flow_protocol(flow, 'network_flow')
        load_path = self.opt['path'].get('pretrain_network_flow')
        if load_path is None:
            get_root_logger().warning(
                'path.pretrain_network_flow is not set: the learned prior is trained on a randomly '
                'initialised flow (fine for tests, meaningless otherwise)'
            )
        else:
            param_key = self.opt['path'].get('param_key_flow', 'params')
            strict = self.opt['path'].get('strict_load_flow', True)
            self.load_network(flow, load_path, strict, param_key)
        flow = flow.to(self.device)
        flow.eval()
        flow.requires_grad_(False)
        return flow

    def _complete_prior_options(self, g_opt: dict) -> dict:
        g_opt = copy.deepcopy(g_opt)
        channels = list(self.net_flow.latent_channels())
        given = g_opt.get('latent_channels')
        if given is not None and list(given) != channels:
            raise OptionError(
                f'network_g.latent_channels is {list(given)} but the flow {type(self.net_flow).__name__} has '
                f'latent levels with {channels} channels; remove the option (it is taken from the flow)'
            )
        g_opt['latent_channels'] = channels
        return g_opt

    @staticmethod
    def _initial_prior_options(prior_opt: dict) -> dict:
        prior_opt = {'type': 'encoded_upsample', **prior_opt}
        if prior_opt['type'] not in INITIAL_PRIORS:
            raise OptionError(
                f"initial_prior.type '{prior_opt['type']}' is unknown; choose one of {', '.join(INITIAL_PRIORS)}"
            )
        prior_opt.setdefault('temperature', 1.0)
        return prior_opt

    @property
    def flow(self):
        return self.net_flow

    @property
    def prior_net(self):
        return self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)

    def init_training_settings(self):
        train_opt = self.opt['train']
        latent_opt, perceptual_opt = train_opt.get('latent_opt'), train_opt.get('perceptual_opt')
        if not latent_opt and not perceptual_opt:
            raise OptionError('FlowPriorModel: set train.latent_opt and/or train.perceptual_opt (both are missing)')
        self.cri_latent = build_loss(latent_opt).to(self.device) if latent_opt else None
        self.cri_perceptual = build_loss(perceptual_opt).to(self.device) if perceptual_opt else None
        self.net_g.train()
        self.setup_ema()
        self.setup_optimizers()
        self.setup_schedulers()

    # ---------------------------------------------------------------- the method
    def initial_prior(
        self,
        lq: Tensor,
        cond,
        generator: torch.Generator | None = None,
        out_size: OutputSize = None,
    ) -> list[Tensor]:
        """z0 as chosen by ``initial_prior.type``, for an HR of size ``out_size`` (None: lq * scale;
        or HR windows)."""
        kind = self.initial_prior_opt['type']
        if kind == 'encoded_upsample':
            return self.net_flow.initial_prior(lq, cond=cond, out_size=out_size)
        temperature = 0.0 if kind == 'zeros' else float(self.initial_prior_opt['temperature'])
        return self.net_flow.sample_latents(lq, temperature, generator=generator, cond=cond, out_size=out_size)

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        out_size = self._out_size()  # the gt's size (or its HR windows) for an arbitrary-scale flow
        with torch.no_grad():  # everything the frozen flow computes without the prior
            cond = self.net_flow.condition(self.lq)
            z0 = self.initial_prior(self.lq, cond, out_size=out_size)
            target = self.net_flow.encode(self.lq, self.gt, cond=cond, out_size=out_size) if self.cri_latent else None
        latents = self.net_g(self.lq, z0)
        loss_dict = OrderedDict()
        l_total = 0
        if self.cri_latent:
            l_latent = self.cri_latent(latents, target)
            loss_dict['l_latent'] = l_latent
            l_total = l_total + l_latent
        if self.cri_perceptual:
            # Gradients reach the prior through the frozen flow's inverse.
            sr = self.net_flow.decode(self.lq, latents, cond=cond, out_size=out_size)
            l_percep, l_style = self.cri_perceptual(sr.clamp(0, 1), self.gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    loss_dict[name] = value
                    l_total = l_total + value
        self.apply_loss(l_total, loss_dict, current_iter)

    # ---------------------------------------------------------------- evaluation
    default_temperatures = ()  # the prior alone unless val.temperatures asks for sampling too

    def evaluation_methods(self) -> list[str]:
        return [PRIOR_METHOD, *super().evaluation_methods()]

    @property
    def evaluated_network(self):
        return self.prior_net

    def method_latents(self, method, lq, cond, generator, out_size):
        if method == PRIOR_METHOD:
            return self.prior_net(lq, self.initial_prior(lq, cond, generator, out_size=out_size))
        return super().method_latents(method, lq, cond, generator, out_size)
