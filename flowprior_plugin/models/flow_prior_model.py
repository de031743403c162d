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

from flowprior_plugin.archs.latent_prior_arch import LatentWindow
from flowprior_plugin.errors import OptionError
from flowprior_plugin.flow_protocol import FlowSRProtocol, HRWindow, OutputSize, check_flow_protocol
from flowprior_plugin.models.base_flow_model import BaseFlowModel

TRAINING_LOSSES = ('latent_opt', 'perceptual_opt', 'pixel_opt')

INITIAL_PRIORS = ('encoded_upsample', 'zeros', 'gaussian')
PRIOR_METHOD = 'prior'


def prior_method_name(temperature: float) -> str:
    """Name of sampling at ``temperature`` around the prior's latents (``prior+0.3``)."""
    return f'{PRIOR_METHOD}+{float(temperature):g}'


@MODEL_REGISTRY.register()
class FlowPriorModel(BaseFlowModel):
    """Learned prior on any registered flow SR network, which stays frozen.

    Options:
        network_flow (dict): The flow (any arch implementing the flow protocol).
        path.pretrain_network_flow (str): Its weights. ``param_key_flow`` (Default: 'params'; use
            ``~`` for the official raw SRFlow files) and ``strict_load_flow`` (Default: true).
        network_g (dict): The latent module, e.g. ``{type: LatentPriorNet, generator: {type: UNet}}``;
            its ``latent_channels`` are taken from the flow.
        initial_prior (dict): ``{type: encoded_upsample}`` (Default, as released),
            ``{type: zeros}`` or ``{type: gaussian, temperature: 0.8}`` (the paper's ablation).
        train.latent_opt / train.perceptual_opt / train.pixel_opt: loss options; at least one is
            required. ``latent_opt`` (L1 to the flow's encoding of the HR) and ``perceptual_opt``
            are the paper's; ``pixel_opt`` (any BasicSR pixel loss, e.g. L1Loss, on the SR decoded
            through the frozen flow, logged as ``l_pix``) is beyond the paper. A loss with weight 0
            costs nothing: it is only computed, for the log, every ``logger.print_freq`` iterations.
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
    def flow(self) -> FlowSRProtocol:
        return self.net_flow

    @property
    def prior_net(self):
        return self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)

    def init_training_settings(self):
        train_opt = self.opt['train']
        if not any(train_opt.get(name) for name in TRAINING_LOSSES):
            raise OptionError(
                f'FlowPriorModel: set at least one of train.{", train.".join(TRAINING_LOSSES)} (all are missing)'
            )
        self.cri_latent, self.cri_perceptual, self.cri_pix = (
            build_loss(train_opt[name]).to(self.device) if train_opt.get(name) else None for name in TRAINING_LOSSES
        )
        losses = [loss for loss in (self.cri_latent, self.cri_perceptual, self.cri_pix) if loss is not None]
        if all(float(getattr(loss, 'loss_weight', 1.0)) == 0 for loss in losses):
            raise OptionError('FlowPriorModel: every training loss has loss_weight 0; nothing would be trained')
        self._geometry_checked = False
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

    def latent_windows(self, z0: list[Tensor], out_size: OutputSize) -> list[LatentWindow] | None:
        """Where each latent level of a batch of HR windows sits in its whole image's latent grid
        (None when the batch holds whole images)."""
        if not isinstance(out_size, HRWindow) or out_size.is_whole():
            return None
        return [LatentWindow.from_hr_window(out_size, z.shape[-2:]) for z in z0]

    def _check_training_geometry(self, z0: list[Tensor]) -> None:
        """Warn once when the first batch's latent grids are too small for the generator: the
        prior then learns mostly from crop borders and fails on whole images."""
        self._geometry_checked = True
        check = getattr(self.get_bare_model(self.net_g), 'small_training_grids', None)
        problems = check(z0) if callable(check) else []
        if problems:
            get_root_logger().warning(
                'FlowPriorModel: the training crops are too small for the latent generator: '
                + '; '.join(problems)
                + '. Raise datasets.train.gt_size (or lq_size and gt_size for ArbitraryScaleSRDataset).'
            )

    def _wanted(self, loss: torch.nn.Module | None, current_iter: int) -> bool:
        """Whether to compute a loss this step: always when it trains, and for the log only when
        its weight is 0."""
        if loss is None:
            return False
        if float(getattr(loss, 'loss_weight', 1.0)) != 0:
            return True
        return current_iter % int(self.opt['logger'].get('print_freq', 1)) == 0

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        out_size = self._out_size()  # the gt's size (or its HR windows) for an arbitrary-scale flow
        want_latent = self._wanted(self.cri_latent, current_iter)
        with torch.no_grad():  # everything the frozen flow computes without the prior
            cond = self.net_flow.condition(self.lq)
            z0 = self.initial_prior(self.lq, cond, out_size=out_size)
            target = self.net_flow.encode(self.lq, self.gt, cond=cond, out_size=out_size) if want_latent else None
        if not self._geometry_checked:
            self._check_training_geometry(z0)
        windows = self.latent_windows(z0, out_size)
        latents = self.net_g(self.lq, z0) if windows is None else self.net_g(self.lq, z0, windows)
        loss_dict = OrderedDict()
        l_total = 0
        if want_latent:
            l_latent = self.cri_latent(latents, target)
            loss_dict['l_latent'] = l_latent
            l_total = l_total + l_latent
        want_pix = self._wanted(self.cri_pix, current_iter)
        if want_pix or self._wanted(self.cri_perceptual, current_iter):
            # Gradients reach the prior through the frozen flow's inverse.
            sr = self.net_flow.decode(self.lq, latents, cond=cond, out_size=out_size)
            if want_pix:
                l_pix = self.cri_pix(sr, self.gt)
                loss_dict['l_pix'] = l_pix
                l_total = l_total + l_pix
            if self._wanted(self.cri_perceptual, current_iter):
                l_percep, l_style = self.cri_perceptual(sr.clamp(0, 1), self.gt)
                for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                    if value is not None:
                        loss_dict[name] = value
                        l_total = l_total + value
        self.apply_loss(l_total, loss_dict, current_iter)

    # ---------------------------------------------------------------- evaluation
    default_temperatures = ()  # the prior alone unless val.temperatures asks for sampling too

    def evaluation_methods(self) -> list[str]:
        """``prior``, then ``prior+<t>`` per ``val.prior_temperatures`` (samples around the
        prior's latents), then temperature sampling."""
        around = (self.opt.get('val') or {}).get('prior_temperatures') or []
        return [PRIOR_METHOD, *(prior_method_name(t) for t in around), *super().evaluation_methods()]

    @property
    def evaluated_network(self):
        return self.prior_net

    def method_latents(self, method, inputs, generator):
        """``prior``: the predicted latents z_hat; ``prior+<t>``: z_hat with Gaussian noise at t
        around it (z_hat computed once for every sample); else temperature sampling."""
        if method != PRIOR_METHOD and not method.startswith(PRIOR_METHOD + '+'):
            return super().method_latents(method, inputs, generator)
        lq, out_size = inputs.lq, inputs.out_size
        z0 = self.initial_prior(lq, inputs.cond, generator, out_size=out_size)
        windows = self.latent_windows(z0, out_size)  # a window of the whole image (a tile of LINF)
        mean = self.prior_net(lq, z0) if windows is None else self.prior_net(lq, z0, windows)
        return mean, 0.0 if method == PRIOR_METHOD else float(method[len(PRIOR_METHOD) + 1 :])
